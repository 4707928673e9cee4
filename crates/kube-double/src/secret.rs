//! What the API server does to every Secret it stores: `stringData` is folded into `data`
//! (base64, over `data` entries of the same key) and dropped, and `type` defaults to `Opaque`.

use serde_json::{Map, Value};

/// Folds `stringData` into `data` and defaults `type`; an error says why the Secret cannot be
/// decoded (`stringData` is not an object of strings, `data` not an object).
pub(crate) fn normalize(secret: &mut Map<String, Value>) -> Result<(), String> {
    let entries = match secret.remove("stringData") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(entries)) => entries,
        Some(other) => return Err(format!("stringData: expected an object, got {other}")),
    };
    if !entries.is_empty() {
        let data = secret
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if data.is_null() {
            *data = Value::Object(Map::new());
        }
        let Some(data) = data.as_object_mut() else {
            return Err(format!("data: expected an object, got {data}"));
        };
        for (key, value) in entries {
            let Value::String(text) = value else {
                return Err(format!("stringData.{key}: expected a string, got {value}"));
            };
            data.insert(key, base64(text.as_bytes()).into());
        }
    }
    let typed = secret
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !typed {
        secret.insert("type".into(), "Opaque".into());
    }
    Ok(())
}

/// Standard base64 with padding, as Kubernetes encodes `[]byte` in JSON.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_is_standard_and_padded() {
        // RFC 4648's test vectors.
        for (text, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(text.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    fn normalized(secret: Value) -> Result<Value, String> {
        let Value::Object(mut fields) = secret else {
            panic!("an object")
        };
        normalize(&mut fields).map(|()| Value::Object(fields))
    }

    #[test]
    fn string_data_is_folded_into_data_and_type_defaults() {
        let secret = normalized(json!({
            "data": {"kept": "a2VwdA==", "both": "b2xk"},
            "stringData": {"both": "new", "token": "s3cr3t"},
        }));
        assert_eq!(
            secret,
            Ok(json!({
                "data": {"kept": "a2VwdA==", "both": "bmV3", "token": "czNjcjN0"},
                "type": "Opaque",
            }))
        );
        assert_eq!(
            normalized(json!({"stringData": {"a": "b"}, "type": "kubernetes.io/tls"})),
            Ok(json!({"data": {"a": "Yg=="}, "type": "kubernetes.io/tls"}))
        );
        assert_eq!(
            normalized(json!({"stringData": {}, "type": ""})),
            Ok(json!({"type": "Opaque"}))
        );
        assert!(normalized(json!({"stringData": {"a": 1}})).is_err());
        assert!(normalized(json!({"stringData": "a"})).is_err());
        assert!(normalized(json!({"data": [], "stringData": {"a": "b"}})).is_err());
    }
}
