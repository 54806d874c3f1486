//! Accounts: register, login by password or token, logout.
//!
//! Passwords are hashed with argon2id on a few dedicated threads (see
//! [`super::hash_pool`]; each hash takes ~19 MiB and tens of milliseconds
//! of a core). Tokens are
//! random, handed to the client once, and stored only as their SHA-256.
//! Unknown users and wrong passwords cost the same hash and give the same
//! error.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::hash_pool::HashPool;
use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::store::{Store, TokenRecord, UserId, UserRecord};

/// How a login proves the user.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The account password.
    Password(String),
    /// A token from an earlier password login of the same device.
    Token(String),
}

/// A verified login: who, and the token this device now holds.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user.
    pub user: UserRecord,
    /// The token to hand back (new on password login, the same on token login).
    pub token: String,
    /// SHA-256 of the token, to revoke it at logout.
    pub token_hash: [u8; 32],
    /// When the token expires, ms since the epoch.
    pub expires_at_ms: u64,
}

/// Account rules over the store.
pub struct Accounts {
    store: Arc<dyn Store>,
    hashing: HashPool,
    registration_enabled: bool,
    token_ttl: Duration,
}

impl Accounts {
    /// Accounts over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        registration_enabled: bool,
        token_ttl: Duration,
        max_concurrent_hashes: usize,
    ) -> std::io::Result<Self> {
        Ok(Accounts {
            store,
            hashing: HashPool::new(max_concurrent_hashes)?,
            registration_enabled,
            token_ttl,
        })
    }

    /// Create an account; durable when it returns.
    pub async fn register(&self, username: &str, password: &str) -> Result<UserId, ServiceError> {
        if !self.registration_enabled {
            return Err(ServiceError::RegistrationDisabled);
        }
        self.create(username, password).await.map(|user| user.id)
    }

    /// Create an account for the operator: allowed even when self-service
    /// registration is off. Durable when it returns.
    pub async fn create(&self, username: &str, password: &str) -> Result<UserRecord, ServiceError> {
        validate_username(username)?;
        validate_password(password)?;
        if self.store.user_by_name(username)?.is_some() {
            return Err(ServiceError::UsernameTaken(username.to_owned()));
        }
        let hash = self.hash(password.to_owned()).await?;
        let store = self.store.clone();
        let name = username.to_owned();
        let created = blocking(move || store.create_user(&name, &hash, now_ms())).await?;
        created.ok_or_else(|| ServiceError::UsernameTaken(username.to_owned()))
    }

    /// Give a user a new password and revoke every token they hold, so
    /// only the new password logs in. Returns the tokens revoked; `None`
    /// if there is no such user. Durable when it returns.
    pub async fn reset_password(
        &self,
        user: UserId,
        password: &str,
    ) -> Result<Option<u64>, ServiceError> {
        validate_password(password)?;
        let hash = self.hash(password.to_owned()).await?;
        let store = self.store.clone();
        blocking(move || {
            if !store.set_password_hash(user, &hash)? {
                return Ok(None);
            }
            store.delete_user_tokens(user, None).map(Some)
        })
        .await
    }

    /// Disable (no login, by password or token) or enable a user; false if
    /// there is no such user. Durable when it returns.
    pub async fn set_disabled(&self, user: UserId, disabled: bool) -> Result<bool, ServiceError> {
        let store = self.store.clone();
        blocking(move || store.set_disabled(user, disabled)).await
    }

    /// Revoke every token of a user, or of one device; returns how many.
    /// Durable when it returns.
    pub async fn revoke_tokens(
        &self,
        user: UserId,
        device_id: Option<String>,
    ) -> Result<u64, ServiceError> {
        let store = self.store.clone();
        blocking(move || store.delete_user_tokens(user, device_id.as_deref())).await
    }

    /// Check a credential for `device_id`; on password login, issue a token.
    pub async fn authenticate(
        &self,
        username: &str,
        device_id: &str,
        credential: Credential,
    ) -> Result<Authenticated, ServiceError> {
        validate_device_id(device_id)?;
        match credential {
            Credential::Password(password) => self.by_password(username, device_id, password).await,
            Credential::Token(token) => self.by_token(username, device_id, &token),
        }
    }

    async fn by_password(
        &self,
        username: &str,
        device_id: &str,
        password: String,
    ) -> Result<Authenticated, ServiceError> {
        let user = self.store.user_by_name(username)?;
        // Unknown users are checked against a dummy hash so both failures
        // cost the same time.
        let stored_hash = match &user {
            Some(user) => user.password_hash.clone(),
            None => dummy_hash().to_owned(),
        };
        let matches = self.verify(password, stored_hash).await?;
        let user = match user {
            Some(user) if matches && !user.disabled => user,
            _ => return Err(ServiceError::AuthFailed),
        };
        let token = new_token();
        let token_hash = hash_token(&token);
        let expires_at_ms = now_ms().saturating_add(self.token_ttl.as_millis() as u64);
        let record = TokenRecord {
            user_id: user.id,
            device_id: device_id.to_owned(),
            expires_at_ms,
        };
        let store = self.store.clone();
        blocking(move || store.put_token(&token_hash, &record)).await?;
        Ok(Authenticated {
            user,
            token,
            token_hash,
            expires_at_ms,
        })
    }

    fn by_token(
        &self,
        username: &str,
        device_id: &str,
        token: &str,
    ) -> Result<Authenticated, ServiceError> {
        let token_hash = hash_token(token);
        let Some(record) = self.store.token(&token_hash)? else {
            return Err(ServiceError::AuthFailed);
        };
        if record.expires_at_ms <= now_ms() || record.device_id != device_id {
            return Err(ServiceError::AuthFailed);
        }
        let Some(user) = self.store.user(record.user_id)? else {
            return Err(ServiceError::AuthFailed);
        };
        if user.disabled || (!username.is_empty() && user.username != username) {
            return Err(ServiceError::AuthFailed);
        }
        Ok(Authenticated {
            user,
            token: token.to_owned(),
            token_hash,
            expires_at_ms: record.expires_at_ms,
        })
    }

    /// Revoke a token (logout); durable when it returns.
    pub async fn revoke(&self, token_hash: [u8; 32]) -> Result<(), ServiceError> {
        let store = self.store.clone();
        blocking(move || store.delete_token(&token_hash)).await?;
        Ok(())
    }

    /// Whether a login is still allowed: the user is not disabled and the
    /// token it holds was not revoked. Asked again after the session is
    /// registered, so a disable or revoke that raced the login either is seen
    /// here or finds the session registered and kicks it.
    pub fn still_valid(&self, user: UserId, token_hash: &[u8; 32]) -> Result<bool, ServiceError> {
        let enabled = self.store.user(user)?.is_some_and(|u| !u.disabled);
        Ok(enabled && self.store.token(token_hash)?.is_some())
    }

    /// Look a user up by name.
    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, ServiceError> {
        Ok(self.store.user_by_name(username)?)
    }

    async fn hash(&self, password: String) -> Result<String, ServiceError> {
        self.hashing
            .run(move || hash_password(&password))
            .await
            .ok_or(ServiceError::ShuttingDown)?
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, ServiceError> {
        self.hashing
            .run(move || verify_password(&password, &hash))
            .await
            .ok_or(ServiceError::ShuttingDown)
    }
}

/// Run a store call on the blocking pool (it may fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ServiceError::ShuttingDown)?
        .map_err(ServiceError::from)
}

fn hash_password(password: &str) -> Result<String, ServiceError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::InvalidArgument(format!("password cannot be hashed: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        tracing::error!("a stored password hash does not parse");
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("pigeon dummy password for unknown users")
            .expect("hashing a fixed password cannot fail")
    })
}

/// A new random token: 32 bytes as 64 hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The form a token is stored in.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 3 to 32 of [a-z0-9_.-], starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ServiceError> {
    let ok = (3..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "username must be 3 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
                .into(),
        ))
    }
}

fn validate_password(password: &str) -> Result<(), ServiceError> {
    if (8..=1024).contains(&password.len()) {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "password must be 8 to 1024 bytes".into(),
        ))
    }
}

/// 1 to 64 of [A-Za-z0-9_.:-].
pub fn validate_device_id(id: &str) -> Result<(), ServiceError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "device_id must be 1 to 64 of A-Z, a-z, 0-9, '_', '.', ':', '-'".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rules() {
        for good in ["bob", "alice_1", "0day", "a.b-c"] {
            validate_username(good).unwrap();
        }
        for bad in [
            "",
            "ab",
            "Bob",
            "_bob",
            "bob!",
            "x".repeat(33).as_str(),
            "bø b",
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids_follow_the_rules() {
        validate_device_id("iphone-1:A").unwrap();
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("has space").is_err());
        assert!(validate_device_id(&"d".repeat(65)).is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
