-- records 001: one row per answered message (RECORDS=mysql; applied by python -m tools.records migrate).
-- user_hash: the WeCom userid keyed-hashed as in the logs; userid: the plain id, only with
-- RECORDS_PLAIN_USERS=true. status: finished, failed, stopped, interrupted, refused, window or overflow.
-- Usage and latency come from Dify's message_end; first_content_ms is the time from the message to the
-- first text of the answer. Feedback is set when the user rates the answer.
CREATE TABLE IF NOT EXISTS conversation_records (
    id                   BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    bot                  VARCHAR(32)   NOT NULL,
    msgid                VARCHAR(128)  NOT NULL,
    sid                  CHAR(32)      NOT NULL,
    user_hash            VARCHAR(32)   NOT NULL,
    userid               VARCHAR(64)   NULL,
    chat                 VARCHAR(128)  NOT NULL DEFAULT '',
    query                MEDIUMTEXT    NOT NULL,
    answer               MEDIUMTEXT    NOT NULL,
    note                 VARCHAR(1024) NOT NULL DEFAULT '',
    status               VARCHAR(16)   NOT NULL,
    moderation           VARCHAR(32)   NOT NULL DEFAULT '',
    dify_conversation_id VARCHAR(64)   NOT NULL DEFAULT '',
    dify_message_id      VARCHAR(64)   NOT NULL DEFAULT '',
    prompt_tokens        INT UNSIGNED  NULL,
    completion_tokens    INT UNSIGNED  NULL,
    total_tokens         INT UNSIGNED  NULL,
    total_price          DECIMAL(20, 10) NULL,
    currency             VARCHAR(8)    NULL,
    dify_latency_ms      INT UNSIGNED  NULL,
    first_content_ms     INT UNSIGNED  NULL,
    feedback             VARCHAR(16)   NULL,
    feedback_text        VARCHAR(1024) NULL,
    feedback_at          DATETIME(3)   NULL,
    created_at           DATETIME(3)   NOT NULL,
    finished_at          DATETIME(3)   NOT NULL,
    UNIQUE KEY uq_records_bot_msgid (bot, msgid),
    KEY ix_records_bot_sid (bot, sid),
    KEY ix_records_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
