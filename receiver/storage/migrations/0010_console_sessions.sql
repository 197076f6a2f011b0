-- 10: the console's sessions, kept in the store so that logging out, a changed token or the
-- idle limit ends a session in every process. The cookie holds a random secret; only its
-- SHA-256 is kept here (secret_hash), and token_hash ties the session to the token it was
-- opened with (an HMAC of it): a token changed or removed ends its sessions.
CREATE TABLE console_sessions (
    id           {id},
    secret_hash  TEXT NOT NULL UNIQUE,
    operator     TEXT NOT NULL,
    token_hash   TEXT NOT NULL,
    created_at   {real} NOT NULL,
    seen_at      {real} NOT NULL,
    expires_at   {real} NOT NULL,
    ended_at     {real},
    ended_by     TEXT,
    client       TEXT,
    user_agent   TEXT
);
