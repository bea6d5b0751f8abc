use std::fmt;

use serde::{Deserialize, Serialize};

/// A delivery status as providers report it.
///
/// The contract's rank is `sent < delivered < read < played` (`played`: a voice message was
/// played, which implies read); `failed` replaces `sent` (or nothing) but never `delivered`,
/// `read` or `played`; any other status has rank 0 and is kept only in the timeline (it becomes
/// the message's status only while nothing better is known).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
    Other(String),
}

impl Status {
    /// Case-insensitive; anything unknown is kept as [`Status::Other`], lower-cased.
    pub fn parse(raw: &str) -> Self {
        match raw.trim().to_ascii_lowercase().as_str() {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "played" => Self::Played,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
            Self::Other(s) => s,
        }
    }

    /// The contract's rank: `sent` 1, `delivered` 2, `read` 3, `played` 4, anything else 0.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Played => 4,
            Self::Failed | Self::Other(_) => 0,
        }
    }

    /// Where a status sits among events with the same timestamp: `sent`, `delivered`, `read`,
    /// `played`, then every other status (providers often stamp several with one second).
    pub fn timeline_order(&self) -> u8 {
        match self.rank() {
            0 => u8::MAX,
            rank => rank,
        }
    }

    /// Which status wins when a message has seen several: a total order in which `failed`
    /// sits above `sent` and below `delivered`, so the current status is simply the maximum.
    pub fn precedence(&self) -> u8 {
        match self {
            Self::Other(_) => 0,
            Self::Sent => 1,
            Self::Failed => 2,
            Self::Delivered => 3,
            Self::Read => 4,
            Self::Played => 5,
        }
    }
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        Self::parse(&s)
    }
}

impl From<Status> for String {
    fn from(s: Status) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn rank_follows_the_contract() {
        assert!(Status::Sent.rank() < Status::Delivered.rank());
        assert!(Status::Delivered.rank() < Status::Read.rank());
        assert!(Status::Read.rank() < Status::Played.rank());
        assert_eq!(Status::parse("deleted").rank(), 0);
    }

    #[test]
    fn failed_beats_sent_but_never_delivered_or_read() {
        assert!(Status::Failed.precedence() > Status::Sent.precedence());
        assert!(Status::Failed.precedence() < Status::Delivered.precedence());
        assert!(Status::Failed.precedence() < Status::Read.precedence());
        assert!(Status::Failed.precedence() < Status::Played.precedence());
        assert!(Status::Read.precedence() < Status::Played.precedence());
    }

    #[test]
    fn equal_times_order_by_rank_then_the_rest() {
        let mut statuses: Vec<Status> =
            ["failed", "read", "deleted", "sent", "played", "delivered"]
                .into_iter()
                .map(Status::parse)
                .collect();
        statuses.sort_by_key(|s| (s.timeline_order(), s.as_str().to_owned()));
        let names: Vec<&str> = statuses.iter().map(Status::as_str).collect();
        assert_eq!(
            names,
            ["sent", "delivered", "read", "played", "deleted", "failed"]
        );
    }

    #[test]
    fn parsing_is_case_insensitive_and_keeps_unknown_statuses() {
        assert_eq!(Status::parse("READ"), Status::Read);
        assert_eq!(Status::parse("Deleted"), Status::Other("deleted".into()));
    }
}
