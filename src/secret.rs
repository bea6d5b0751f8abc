//! Credentials: a value whose `Debug` never shows it, and the key of a Standard Webhooks
//! `whsec_` secret.

use std::fmt;

use base64::Engine;
use serde::Deserialize;

/// A credential. Its `Debug` never shows it. An all-digit value set through the environment
/// arrives as a number and is taken as its text.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Text")]
pub struct Secret(String);

#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Text(String),
    Number(u64),
}

impl From<Text> for Secret {
    fn from(value: Text) -> Self {
        Self(value.into_string())
    }
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::Text(s) => s,
            Text::Number(n) => n.to_string(),
        }
    }
}

/// For a text setting that may be all digits (an Engati customer id): set through the
/// environment, such a value arrives as a number, and is taken as its text.
pub fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Text::deserialize(d)?.into_string())
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Empty, or one of the values shipped in `config.toml` (they all say "change-me").
    pub fn is_placeholder(&self) -> bool {
        let value = self.0.trim();
        value.is_empty() || value.contains("change-me") || SHIPPED_PLACEHOLDERS.contains(&value)
    }
}

/// Placeholders in the shipped `config.toml` that cannot say "change-me" in plain text.
const SHIPPED_PLACEHOLDERS: &[&str] = &["whsec_Y2hhbmdlLW1lLWdlbmVyaWMtc2VjcmV0"];

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

/// The key of a Standard Webhooks secret: `whsec_` then base64, with or without its `=`
/// padding, and with whatever bits the last character carries past the key's end (the
/// reference libraries decode both leniently; `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS` is one
/// whose last character has such bits set).
pub fn decode_whsec(secret: &Secret) -> Result<Vec<u8>, String> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    const PADDED_OR_NOT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::PAD
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let encoded = secret
        .expose()
        .strip_prefix("whsec_")
        .ok_or_else(|| "must start with whsec_".to_owned())?;
    PADDED_OR_NOT
        .decode(encoded)
        .map_err(|_| "the text after whsec_ must be base64".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{decode_whsec, Secret};

    #[test]
    fn whsec_keys_decode_as_the_reference_libraries_decode_them() {
        // Python's base64.b64decode (what `standardwebhooks` uses) gives these 23 bytes; the
        // last character's unused bits are set, which a strict decoder refuses.
        let expected = "31f290f6bf06298aab4f08d43c3f082cf648a362da2da4";
        for text in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS=",
        ] {
            let key = decode_whsec(&Secret::new(text.to_owned())).unwrap();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected, "{text}");
        }
        assert!(decode_whsec(&Secret::new("whsec_not base64!".to_owned())).is_err());
        assert!(decode_whsec(&Secret::new("MfKQ9r8G".to_owned())).is_err());
    }
}
