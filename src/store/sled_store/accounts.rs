//! Account writes of the sled engine outside the message path: tokens with
//! their per-user index, and the admin's changes to a user record.
//!
//! Owns the `usertokenhash_device` index (user ++ token hash → device id),
//! which is written in the same transaction as `tokenhash_token`, so
//! "revoke every token of this user (or device)" is a prefix scan instead
//! of a walk over every token. Never syncs (the caller does).

use prost::Message;
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::batch::{finish_tx, tx};
use super::{from_sled, Trees};
use crate::store::records::{decode, u64_key, TokenValue, UserValue, U64_LEN};
use crate::store::{StoreError, TokenRecord, UserId};

/// Key of the token index: user (8 BE) ++ SHA-256 of the token (32).
fn index_key(user: UserId, token_hash: &[u8; 32]) -> [u8; U64_LEN + 32] {
    let mut key = [0u8; U64_LEN + 32];
    key[..U64_LEN].copy_from_slice(&u64_key(user));
    key[U64_LEN..].copy_from_slice(token_hash);
    key
}

/// Stores (or replaces) a token and its index entry in one transaction.
pub(super) fn put_token(
    trees: &Trees,
    token_hash: &[u8; 32],
    token: &TokenRecord,
) -> Result<(), StoreError> {
    let value = TokenValue::from_record(token).encode_to_vec();
    let pair = (&trees.tokenhash_token, &trees.usertokenhash_device);
    finish_tx(pair.transaction(|(tokens, index)| {
        // A replaced token of another user must not stay in that user's index.
        if let Some(old) = tokens.get(token_hash)? {
            let old: TokenValue = tx(decode("token", &old))?;
            index.remove(&index_key(old.user_id, token_hash)[..])?;
        }
        tokens.insert(&token_hash[..], value.as_slice())?;
        index.insert(
            &index_key(token.user_id, token_hash)[..],
            token.device_id.as_bytes(),
        )?;
        Ok(())
    }))
}

/// Deletes a token and its index entry; a missing token is fine.
pub(super) fn delete_token(trees: &Trees, token_hash: &[u8; 32]) -> Result<(), StoreError> {
    let pair = (&trees.tokenhash_token, &trees.usertokenhash_device);
    finish_tx(pair.transaction(|(tokens, index)| {
        remove_token(tokens, index, token_hash)?;
        Ok(())
    }))
}

fn remove_token(
    tokens: &TransactionalTree,
    index: &TransactionalTree,
    token_hash: &[u8; 32],
) -> sled::transaction::ConflictableTransactionResult<(), StoreError> {
    if let Some(old) = tokens.remove(&token_hash[..])? {
        let old: TokenValue = tx(decode("token", &old))?;
        index.remove(&index_key(old.user_id, token_hash)[..])?;
    }
    Ok(())
}

/// Deletes every token of `user` (or of one of its devices) in one
/// transaction; returns how many.
pub(super) fn delete_user_tokens(
    trees: &Trees,
    user: UserId,
    device_id: Option<&str>,
) -> Result<u64, StoreError> {
    let mut hashes = Vec::new();
    for item in trees.usertokenhash_device.scan_prefix(u64_key(user)) {
        let (key, device) = item.map_err(from_sled)?;
        if device_id.is_some_and(|d| d.as_bytes() != device.as_ref()) {
            continue;
        }
        let hash: [u8; 32] = key[U64_LEN..]
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("token index key of {} bytes", key.len())))?;
        hashes.push(hash);
    }
    if hashes.is_empty() {
        return Ok(0);
    }
    let pair = (&trees.tokenhash_token, &trees.usertokenhash_device);
    finish_tx(pair.transaction(|(tokens, index)| {
        for hash in &hashes {
            remove_token(tokens, index, hash)?;
            // An index entry whose token is already gone goes too.
            index.remove(&index_key(user, hash)[..])?;
        }
        Ok(())
    }))?;
    Ok(hashes.len() as u64)
}

/// Rewrites one user record through `change`; false if there is no such user.
pub(super) fn update_user(
    trees: &Trees,
    user: UserId,
    change: impl Fn(&mut UserValue),
) -> Result<bool, StoreError> {
    let key = u64_key(user);
    finish_tx(trees.userid_user.transaction(|users| {
        let Some(raw) = users.get(key)? else {
            return Ok(false);
        };
        let mut value: UserValue = tx(decode("user", &raw))?;
        change(&mut value);
        users.insert(&key[..], value.encode_to_vec())?;
        Ok(true)
    }))
}

/// Schema 1 → 2: index every existing token. Idempotent, so a crash before
/// the new version is written just runs it again.
pub(super) fn index_existing_tokens(trees: &Trees) -> Result<u64, StoreError> {
    let mut indexed = 0;
    for item in trees.tokenhash_token.iter() {
        let (key, raw) = item.map_err(from_sled)?;
        let token: TokenValue = decode("token", &raw)?;
        let hash: [u8; 32] = key
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("token key of {} bytes", key.len())))?;
        trees
            .usertokenhash_device
            .insert(index_key(token.user_id, &hash), token.device_id.as_bytes())
            .map_err(from_sled)?;
        indexed += 1;
    }
    Ok(indexed)
}
