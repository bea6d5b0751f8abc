//! Recipients as providers write them, and the one form flowhook files them under.
//!
//! Meta sends `16505551234`, BIK `+919090909090`, people type `+91 90909 09090`. Validation
//! uses libphonenumber's metadata (the `phonenumber` crate), so a number written without its
//! country code (`09090 909090`) is not mistaken for some other country's number: it has no
//! E.164 form and is filed as sent.

use phonenumber::Mode;

/// `raw` in E.164 (`+` and digits) when it is a valid phone number written with its country
/// code, with or without `+` or `00`, and with the spaces, dashes, dots and brackets people
/// write; `None` otherwise (a group id, a user id, a national number).
pub fn e164(raw: &str) -> Option<String> {
    let digits = international_digits(raw)?;
    let number = phonenumber::parse(None, format!("+{digits}")).ok()?;
    phonenumber::is_valid(&number).then(|| number.format().mode(Mode::E164).to_string())
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
/// then 8 to 15 digits among separators.
fn international_digits(raw: &str) -> Option<String> {
    let text = raw.trim();
    let text = text
        .strip_prefix('+')
        .or_else(|| text.strip_prefix("00"))
        .unwrap_or(text);
    let mut digits = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
            _ => return None,
        }
    }
    (8..=15).contains(&digits.len()).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::{e164, lookup_key};

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
    fn lookup_keys_are_stable() {
        for raw in ["+91 90909 09090", "09090909090", " group-1 ", "16505551234"] {
            let once = lookup_key(raw);
            assert_eq!(lookup_key(&once), once, "{raw}");
        }
        assert_eq!(lookup_key(" group-1 "), "group-1");
    }
}
