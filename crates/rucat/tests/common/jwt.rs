//! An OIDC issuer of the tests' own: RSA and P-256 keys generated here, their JWKS, and JWTs
//! signed with them. No network.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "rucat";

/// A signing key and its JWK.
pub struct Key {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

/// A new RSA key (2048 bits) for RS256.
pub fn rsa_key(kid: &str) -> Key {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key");
    let der = private.to_pkcs1_der().expect("PKCS#1");
    let b64 = |bytes: Vec<u8>| URL_SAFE_NO_PAD.encode(bytes);
    Key {
        kid: kid.to_owned(),
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(private.n().to_bytes_be()),
            "e": b64(private.e().to_bytes_be()),
        }),
    }
}

/// A new P-256 key for ES256.
pub fn ec_key(kid: &str) -> Key {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("an EC key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the EC key reads back");
    // Uncompressed point: 0x04, x, y.
    let point = pair.public_key().as_ref();
    Key {
        kid: kid.to_owned(),
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

/// The tests' issuer: one RSA and one EC key (generated once per test binary).
pub struct Issuer {
    pub rsa: Key,
    pub ec: Key,
}

pub fn issuer() -> &'static Issuer {
    static ISSUER_KEYS: OnceLock<Issuer> = OnceLock::new();
    ISSUER_KEYS.get_or_init(|| Issuer {
        rsa: rsa_key("rsa-1"),
        ec: ec_key("ec-1"),
    })
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Standard claims for `sub`, valid for an hour, plus `extra`.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
        "iat": now(), "nbf": now() - 5, "exp": now() + 3600,
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

/// A JWT of `claims` signed with `key` (its kid in the header).
pub fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}
