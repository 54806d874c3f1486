//! The few JSON Web Tokens push needs, signed with `ring`: ES256 for APNs
//! provider tokens and RS256 for the Google OAuth2 assertion.
//!
//! Hand-written instead of a JWT crate because only signing two fixed
//! shapes is needed (no parsing, no verification, no key formats beyond
//! PKCS#8), and `ring` is already in the tree through rustls.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;

/// A key that cannot be used for signing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The signing half of a JWT: which algorithm, and the key.
pub enum Signer {
    /// ECDSA P-256 with SHA-256 (APNs).
    Es256(EcdsaKeyPair),
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    Rs256(RsaKeyPair),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Signer::Es256(_) => "Signer::Es256",
            Signer::Rs256(_) => "Signer::Rs256",
        })
    }
}

impl Signer {
    /// An ES256 signer from a PKCS#8 PEM P-256 key (an APNs .p8 file).
    pub fn es256_from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        let der = pkcs8_der(pem)?;
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map(Signer::Es256)
        .map_err(|e| KeyError(format!("not a PKCS#8 P-256 key: {e}")))
    }

    /// An RS256 signer from a PKCS#8 PEM RSA key (a service account's
    /// `private_key`).
    pub fn rs256_from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        let der = pkcs8_der(pem)?;
        RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map(Signer::Rs256)
            .map_err(|e| KeyError(format!("not a PKCS#8 RSA key: {e}")))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// `header.claims.signature`, each part base64url without padding.
    /// `kid` goes in the header when given.
    pub fn sign(&self, kid: Option<&str>, claims: &impl Serialize) -> Result<String, KeyError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'a str,
            typ: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kid: Option<&'a str>,
        }
        let header = Header {
            alg: self.alg(),
            typ: "JWT",
            kid,
        };
        let header = serde_json::to_vec(&header).map_err(|e| KeyError(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| KeyError(e.to_string()))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Es256(key) => key
                .sign(&rng, token.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError("ECDSA signing failed".to_owned()))?,
            Signer::Rs256(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    token.as_bytes(),
                    &mut out,
                )
                .map_err(|_| KeyError("RSA signing failed".to_owned()))?;
                out
            }
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

/// The DER of the first `PRIVATE KEY` block of a PEM text.
fn pkcs8_der(pem: &[u8]) -> Result<PrivatePkcs8KeyDer<'static>, KeyError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| KeyError(format!("no PKCS#8 \"PRIVATE KEY\" PEM block: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let signer = Signer::es256_from_pem(pem(pkcs8.as_ref()).as_bytes()).unwrap();
        let Signer::Es256(key) = &signer else {
            unreachable!()
        };
        let public = key.public_key().as_ref().to_vec();
        let token = signer
            .sign(
                Some("KEY123"),
                &serde_json::json!({"iss": "TEAM", "iat": 1}),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "KEY123");
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JWS wants r||s, not DER");
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(signed.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(Signer::es256_from_pem(b"not a key").is_err());
        assert!(Signer::rs256_from_pem(pem(b"junk").as_bytes()).is_err());
    }
}
