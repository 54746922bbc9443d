//! The signature and hash primitives sigstore-tuf verifies with: ed25519 (ed25519-dalek, strict
//! verification) and SHA-2 (sha2), pure Rust, so the device build carries no C crypto library.
//! Other key types are refused, which the repository never uses.

use sha2::Digest;
use sigstore_crypto::{CryptoProvider, HashContext, SigningScheme};
use sigstore_types::HashAlgorithm;

#[derive(Debug)]
struct PureRust;

struct Hasher<D>(D);

impl<D: Digest + Send + 'static> HashContext for Hasher<D> {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finalize(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

impl CryptoProvider for PureRust {
    fn hash(&self, algorithm: HashAlgorithm) -> sigstore_crypto::Result<Box<dyn HashContext>> {
        Ok(match algorithm {
            HashAlgorithm::Sha2256 => Box::new(Hasher(sha2::Sha256::new())),
            HashAlgorithm::Sha2384 => Box::new(Hasher(sha2::Sha384::new())),
            HashAlgorithm::Sha2512 => Box::new(Hasher(sha2::Sha512::new())),
            #[allow(unreachable_patterns)]
            other => return Err(sigstore_crypto::Error::UnsupportedAlgorithm(format!("{other:?}"))),
        })
    }

    fn verify_raw(&self, scheme: SigningScheme, key: &[u8], data: &[u8], sig: &[u8]) -> sigstore_crypto::Result<()> {
        match scheme {
            SigningScheme::Ed25519 => {
                let key: [u8; 32] = key
                    .try_into()
                    .map_err(|_| sigstore_crypto::Error::InvalidKey("ed25519 keys are 32 bytes".into()))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
                    .map_err(|e| sigstore_crypto::Error::InvalidKey(e.to_string()))?;
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|e| sigstore_crypto::Error::Verification(e.to_string()))?;
                key.verify_strict(data, &sig).map_err(|e| sigstore_crypto::Error::Verification(e.to_string()))
            }
            other => Err(sigstore_crypto::Error::UnsupportedAlgorithm(format!("{other:?}"))),
        }
    }

    fn verify_prehashed(&self, scheme: SigningScheme, _: &[u8], _: &[u8], _: &[u8]) -> sigstore_crypto::Result<()> {
        Err(sigstore_crypto::Error::UnsupportedAlgorithm(format!("{scheme:?} (prehashed)")))
    }
}

static PROVIDER: PureRust = PureRust;

/// Installs the provider for this process (idempotent; a provider installed first wins).
pub fn install() {
    let _ = sigstore_crypto::install_default_provider(&PROVIDER);
}
