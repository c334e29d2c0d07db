"""Developer tools: WeCom and Dify simulators."""
