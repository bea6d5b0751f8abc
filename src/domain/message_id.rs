use std::fmt;

use serde::{Deserialize, Serialize};

/// A provider message id (`wamid.HBgM...==`): non-empty, at most [`MessageId::MAX_LEN`] bytes,
/// no control characters. It may hold `/`, `+` and `=`; the store keys on its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    pub const MAX_LEN: usize = 512;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("message id is empty".into());
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("message id is longer than {} bytes", Self::MAX_LEN));
        }
        if raw.chars().any(char::is_control) {
            return Err("message id holds control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageId;

    #[test]
    fn base64_like_ids_are_kept_exactly() {
        let id = MessageId::parse("wamid.HBgM/ab+c==").unwrap();
        assert_eq!(id.as_str(), "wamid.HBgM/ab+c==");
    }

    #[test]
    fn empty_oversized_and_control_character_ids_are_refused() {
        assert!(MessageId::parse("").is_err());
        assert!(MessageId::parse(&"a".repeat(513)).is_err());
        assert!(MessageId::parse("abc\0def").is_err());
        assert!(MessageId::parse("abc\ndef").is_err());
    }
}
