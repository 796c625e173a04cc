-- Reset and verification tokens are minted by the worker when it sends the email, not by
-- the API (SPEC section 14: no raw token at rest but in the user's inbox). The API inserts
-- the row without a hash (it still counts for the hourly limits and can be voided); the job
-- carries only the row id; the worker stores the SHA-256 of the token it puts in the link.
-- A row without a hash matches no token.
alter table email_tokens alter column token_hash drop not null;
