-- 001: the users allowed to talk to the bot.
-- userid: the WeCom userid (from.userid in callbacks); account: the business-system account the
-- authentication API issues tokens for. No passwords are stored: the bridge authenticates to the
-- auth API with its own service secret.
CREATE TABLE IF NOT EXISTS wecom_users (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    userid       VARCHAR(64)  NOT NULL,
    account      VARCHAR(128) NOT NULL,
    display_name VARCHAR(128) NOT NULL DEFAULT '',
    enabled      TINYINT(1)   NOT NULL DEFAULT 1,
    created_at   TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at   TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    UNIQUE KEY uq_wecom_users_userid (userid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
