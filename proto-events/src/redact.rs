//! URLs for log lines and error messages, with their credentials hidden.

/// `text` with the password of its URL, or a lone user name (the NATS
/// token form, `nats://token@host`), replaced by `***`. A lone user name of
/// a PostgreSQL URL is kept: it is no secret there.
///
/// Works on text that does not parse as a URL too, and keeps everything
/// else as written. The credentials end at the last `@` of the authority
/// (before the first `/`, `?` or `#`); in text that is no valid URL (say a
/// password with a raw `/`), at the last `@` of the text.
#[must_use]
pub fn redact_url(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let authority_end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    let at = text[start..authority_end]
        .rfind('@')
        .or_else(|| {
            url::Url::parse(text)
                .is_err()
                .then(|| text[start..].rfind('@'))
                .flatten()
        })
        .map(|i| start + i);
    let Some(at) = at else {
        return text.to_owned();
    };
    let scheme = &text[..start];
    let hidden = match text[start..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("postgres") => return text.to_owned(),
        None => "***".to_owned(),
    };
    format!("{scheme}{hidden}{}", &text[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_and_tokens_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("nats://s3cret@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("u:pw@host:4222"), "u:***@host:4222");
        assert_eq!(redact_url("nats://host/a@b"), "nats://host/a@b");
        assert_eq!(redact_url("tls://tok3n@b/"), "tls://***@b/");
        assert_eq!(redact_url("https://u@h/x"), "https://***@h/x");
    }

    #[test]
    fn an_at_sign_after_the_authority_is_no_credential() {
        assert_eq!(
            redact_url("postgres://u:p@h/db?application_name=a@b"),
            "postgres://u:***@h/db?application_name=a@b"
        );
        assert_eq!(redact_url("https://h/a@b"), "https://h/a@b");
    }

    #[test]
    fn text_that_is_no_url_is_redacted_up_to_its_last_at_sign() {
        // A raw `/` in the password: not a valid URL (port "pa").
        assert_eq!(redact_url("https://u:pa/ss@h/x"), "https://u:***@h/x");
        assert_eq!(redact_url("nats://u:pa/ss@h"), "nats://u:***@h");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
