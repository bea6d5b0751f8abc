//! Recipients as providers write them, and the one form flowhook files them under.
//!
//! Meta sends `16505551234`, BIK `+919090909090`, people type `+91 90909 09090`. Validation
//! uses libphonenumber's metadata (the `phonenumber` crate), so a number written without its
//! country code (`09090 909090`) is not mistaken for some other country's number: it has no
//! E.164 form and is filed as sent.
//!
//! Validating a number took about a tenth of flowhook's CPU per webhook (`bench/profile.sh`;
//! the crate finds its compiled regexes by hashing their pattern text, on every use), and the
//! same recipients come back again and again, so answers are kept in a small bounded cache.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use phonenumber::Mode;

/// `raw` in E.164 (`+` and digits) when it is a valid phone number written with its country
/// code, with or without `+` or `00`, and with the spaces, dashes, dots and brackets people
/// write; `None` otherwise (a group id, a user id, a national number).
pub fn e164(raw: &str) -> Option<String> {
    known(raw).map(|k| k.e164.into_string())
}

/// The ISO 3166 region (`IN`, `US`, ...) of a valid number written as [`e164`] reads it;
/// `None` for anything else (what a rate card's `default` prices).
pub fn region(raw: &str) -> Option<String> {
    known(raw).and_then(|k| Some(k.region?.as_ref().to_owned()))
}

/// What the metadata says of a number, from the cache when it was asked before.
fn known(raw: &str) -> Option<Known> {
    let digits = Digits::of(raw)?;
    if let Some(known) = CACHE.get(digits) {
        return known;
    }
    let answer = validate(digits);
    CACHE.insert(digits, answer.clone());
    answer
}

/// A valid number: its E.164 form and its region.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    e164: Box<str>,
    region: Option<phonenumber::country::Id>,
}

/// [`e164`] for a recipient known to be a full international number (Meta's `recipient_id`
/// and `wa_id`: the country code and the number, digits only): `+` and its digits even when
/// libphonenumber's metadata does not know the range (Meta's test numbers, `+1 555 01x xxxx`,
/// are not valid there).
pub fn international(raw: &str) -> Option<String> {
    e164(raw).or_else(|| unlisted(raw))
}

/// `+` and the digits of `raw` when it is written like an international number (see
/// [`e164`]; a country code never starts with 0) that the metadata does not know; `None`
/// otherwise. What a message [`international`] filed is found under.
pub fn unlisted(raw: &str) -> Option<String> {
    let digits = Digits::of(raw)?;
    let text = format!("{:0width$}", digits.value, width = usize::from(digits.len));
    (!text.starts_with('0') && e164(raw).is_none()).then(|| format!("+{text}"))
}

/// Loads libphonenumber's metadata now (about 90 ms, its regexes compiled once) rather than in
/// the first request that needs it.
pub fn warm_up() {
    let _ = e164("+919090909090");
}

/// What a recipient is filed and looked up under: its E.164 form when it has one, else the
/// text as sent without surrounding white space. Idempotent: `lookup_key(lookup_key(x))`
/// is `lookup_key(x)`.
pub fn lookup_key(raw: &str) -> String {
    e164(raw).unwrap_or_else(|| raw.trim().to_owned())
}

/// The digits of something written like an international number: an optional `+` or `00`,
/// then 8 to 15 digits among separators. Held as a number and a count (leading zeros count),
/// so that a cache lookup needs no allocation.
#[derive(Debug, Clone, Copy)]
struct Digits {
    value: u64,
    len: u8,
}

impl Digits {
    fn of(raw: &str) -> Option<Self> {
        let text = raw.trim();
        let text = text
            .strip_prefix('+')
            .or_else(|| text.strip_prefix("00"))
            .unwrap_or(text);
        let mut digits = Self { value: 0, len: 0 };
        for c in text.chars() {
            match c {
                // Past 15 digits the answer is `None` whatever follows.
                '0'..='9' if digits.len == 15 => return None,
                '0'..='9' => {
                    digits.value = digits.value * 10 + u64::from(c as u8 - b'0');
                    digits.len += 1;
                }
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                _ => return None,
            }
        }
        (8..=15).contains(&digits.len).then_some(digits)
    }

    /// One number per digit string: 15 digits take 50 bits, the count goes above them.
    fn key(self) -> u64 {
        self.value | u64::from(self.len) << 56
    }
}

/// The uncached answer: libphonenumber's, for `+` and the digits.
fn validate(digits: Digits) -> Option<Known> {
    let text = format!("+{:0width$}", digits.value, width = usize::from(digits.len));
    let number = phonenumber::parse(None, text).ok()?;
    phonenumber::is_valid(&number).then(|| Known {
        e164: number
            .format()
            .mode(Mode::E164)
            .to_string()
            .into_boxed_str(),
        region: number.country().id(),
    })
}

/// Shards of digits -> answer, each emptied when it reaches its share of [`CACHE_ENTRIES`]:
/// a recipient seen before costs a hash lookup, and memory stays bounded (about 4 MB full).
/// Sharded so that HTTP workers and the store's writer rarely wait for each other.
struct Cache {
    shards: [Mutex<HashMap<u64, Option<Known>>>; SHARDS],
}

const SHARDS: usize = 16;
/// Recipients remembered at most, over all shards.
const CACHE_ENTRIES: usize = 64 * 1024;

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::new);

impl Cache {
    fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }

    fn shard(&self, digits: Digits) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Known>>> {
        // A panic cannot leave a shard half-changed (one insert or clear), so poison is moot.
        self.shards[(digits.value % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered answer, if any: `Some(None)` for a number known to be invalid.
    fn get(&self, digits: Digits) -> Option<Option<Known>> {
        self.shard(digits).get(&digits.key()).cloned()
    }

    fn insert(&self, digits: Digits, answer: Option<Known>) {
        let mut shard = self.shard(digits);
        if shard.len() >= CACHE_ENTRIES / SHARDS {
            shard.clear();
        }
        shard.insert(digits.key(), answer);
    }
}

#[cfg(test)]
mod tests {
    use phonenumber::Mode;

    use super::{e164, lookup_key, region, Cache, Digits, Known, CACHE_ENTRIES};

    #[test]
    fn common_ways_of_writing_one_number_share_its_e164_form() {
        for raw in [
            "919090909090",
            "+919090909090",
            "+91 90909 09090",
            "0091 90909-09090",
            " +91 (90909) 09090 ",
        ] {
            assert_eq!(e164(raw).as_deref(), Some("+919090909090"), "{raw}");
        }
        assert_eq!(e164("16505551234").as_deref(), Some("+16505551234"));
        assert_eq!(e164("+1 (650) 555-1234").as_deref(), Some("+16505551234"));
    }

    #[test]
    fn what_is_not_an_international_number_has_no_e164_form() {
        for raw in [
            "09090909090",
            "9090909090",
            "120363025246125486@g.us",
            "US.13491208655302741918",
            "+91",
            "",
            "+91 90909 0909x",
        ] {
            assert_eq!(e164(raw), None, "{raw}");
        }
    }

    #[test]
    fn a_numbers_region_is_its_countrys() {
        assert_eq!(region("+91 90909 09090").as_deref(), Some("IN"));
        assert_eq!(region("16505551234").as_deref(), Some("US"));
        assert_eq!(region("+1 416 979 1234").as_deref(), Some("CA"));
        assert_eq!(region("+15551340563"), None, "not a valid number");
        assert_eq!(region("group-1"), None);
    }

    #[test]
    fn metas_test_numbers_are_international_numbers_all_the_same() {
        assert_eq!(
            e164("15551340563"),
            None,
            "not in libphonenumber's metadata"
        );
        assert_eq!(
            super::international("15551340563").as_deref(),
            Some("+15551340563")
        );
        assert_eq!(
            super::international("919090909090").as_deref(),
            Some("+919090909090")
        );
        assert_eq!(super::international("US.13491208655302741918"), None);
        assert_eq!(
            super::unlisted("+15551340563").as_deref(),
            Some("+15551340563")
        );
        assert_eq!(super::unlisted("919090909090"), None, "a valid number");
        assert_eq!(
            super::unlisted("+1 555 134 0563").as_deref(),
            Some("+15551340563")
        );
        assert_eq!(super::unlisted("09090909090"), None, "a national number");
        assert_eq!(super::unlisted("group-1"), None);
    }

    #[test]
    fn lookup_keys_are_stable() {
        for raw in ["+91 90909 09090", "09090909090", " group-1 ", "16505551234"] {
            let once = lookup_key(raw);
            assert_eq!(lookup_key(&once), once, "{raw}");
        }
        assert_eq!(lookup_key(" group-1 "), "group-1");
    }

    /// `e164` as it was before the cache, to compare with.
    fn uncached(raw: &str) -> Option<String> {
        let text = raw.trim();
        let text = text
            .strip_prefix('+')
            .or_else(|| text.strip_prefix("00"))
            .unwrap_or(text);
        let mut digits = String::new();
        for c in text.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                _ => return None,
            }
        }
        if !(8..=15).contains(&digits.len()) {
            return None;
        }
        let number = phonenumber::parse(None, format!("+{digits}")).ok()?;
        phonenumber::is_valid(&number).then(|| number.format().mode(Mode::E164).to_string())
    }

    /// Numbers from several countries, valid and not, 5 to 18 digits, with and without `+`,
    /// `00`, leading zeros, separators and stray characters (a fixed pseudo-random sequence).
    fn many_ways_of_writing_numbers() -> Vec<String> {
        // Starts of numbers, with the length a valid number of that kind has (0: any).
        let shapes = [
            ("1650555", 11),
            ("91909", 12),
            ("9198", 12),
            ("447911", 12),
            ("4420", 12),
            ("49151", 13),
            ("86138", 13),
            ("55119", 13),
            ("3361", 11),
            ("7916", 11),
            ("0", 0),
            ("00", 0),
            ("120363", 0),
            ("999", 0),
            ("2", 0),
        ];
        let prefixes = ["", "+", "00", " +", "+0", "0", "+ ", "++"];
        let separators = [" ", "-", ".", "(", ")", "\u{a0}", "  "];
        let strays = ["x", "/", "#"];
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        (0..2000)
            .map(|_| {
                let (start, len) = shapes[next(shapes.len())];
                let len = if len == 0 || next(4) == 0 {
                    5 + next(14)
                } else {
                    len
                };
                let mut digits = start.to_owned();
                while digits.len() < len {
                    digits.push(char::from(b'0' + next(10) as u8));
                }
                let mut raw = match next(3) {
                    0 => prefixes[next(prefixes.len())],
                    1 => "+",
                    _ => "",
                }
                .to_owned();
                for c in digits.chars() {
                    if next(6) == 0 {
                        let separator = if next(5) == 0 {
                            strays[next(strays.len())]
                        } else {
                            separators[next(separators.len())]
                        };
                        raw.push_str(separator);
                    }
                    raw.push(c);
                }
                if next(10) == 0 {
                    raw.push(' ');
                }
                raw
            })
            .collect()
    }

    #[test]
    fn cached_answers_are_the_uncached_ones() {
        let inputs = many_ways_of_writing_numbers();
        let mut valid = 0;
        for raw in &inputs {
            let expected = uncached(raw);
            valid += usize::from(expected.is_some());
            assert_eq!(e164(raw), expected, "{raw:?}, first time");
            assert_eq!(e164(raw), expected, "{raw:?}, from the cache");
        }
        assert!(
            (400..1600).contains(&valid),
            "{valid} of 2000 valid: too few cases of one kind"
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = Cache::new();
        let answer = Some(Known {
            e164: "+919090909090".into(),
            region: None,
        });
        for value in 0..(CACHE_ENTRIES as u64 * 2) {
            cache.insert(Digits { value, len: 12 }, answer.clone());
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= CACHE_ENTRIES, "{held}");
        let last = Digits {
            value: CACHE_ENTRIES as u64 * 2 - 1,
            len: 12,
        };
        assert_eq!(cache.get(last), Some(answer));
        assert_eq!(cache.get(Digits { value: 7, len: 11 }), None);
    }

    #[test]
    fn leading_zeros_make_a_different_key() {
        let short = Digits::of("91909090909").unwrap();
        let long = Digits::of("091909090909").unwrap();
        assert_eq!(short.value, long.value);
        assert_ne!(short.key(), long.key());
    }
}
