//! Keeping the nodes' passwords out of everything the command prints.
//!
//! The runtime already hides passwords in what it reports, but clap quotes arguments back in its
//! errors (`unexpected argument 'redis://:pw@host'`), and a URL too broken to parse may hold
//! its password anywhere. So every line printed goes through [`Secrets::hide`], which removes
//! both the passwords found in the command line and `REDIS_URLS`, and the password part of
//! anything shaped like a URL.

/// What replaces a password.
const HIDDEN: &str = "***";

/// The passwords of the URLs given to this process.
#[derive(Debug, Default)]
pub struct Secrets {
    passwords: Vec<String>,
}

impl Secrets {
    /// The passwords in the command line's arguments and in `REDIS_URLS`.
    pub fn from_args_and_env() -> Secrets {
        let env = std::env::var_os("REDIS_URLS").unwrap_or_default();
        let env_urls: Vec<String> = env
            .to_string_lossy()
            .split(',')
            .map(str::to_owned)
            .collect();
        let args = std::env::args_os().map(|arg| arg.to_string_lossy().into_owned());
        Secrets::from_texts(args.chain(env_urls))
    }

    /// The passwords of the URLs among `texts` (an argument like `--url=redis://...` included).
    fn from_texts(texts: impl IntoIterator<Item = String>) -> Secrets {
        let mut passwords: Vec<String> = texts
            .into_iter()
            .filter_map(|text| password_in(&text).map(str::to_owned))
            .collect();
        // Longest first, so that a password containing another is hidden whole.
        passwords.sort_unstable_by_key(|password| std::cmp::Reverse(password.len()));
        passwords.dedup();
        Secrets { passwords }
    }

    /// `text` with every known password, and the password of anything shaped like a URL,
    /// replaced by `***`.
    pub fn hide(&self, text: &str) -> String {
        let mut hidden = hide_url_passwords(text);
        for password in &self.passwords {
            hidden = hidden.replace(password.as_str(), HIDDEN);
        }
        hidden
    }
}

/// The password in `text` if it holds a URL with one: what lies between the first `:` after
/// `://` and the last `@`, however broken the URL is otherwise (a `/` or a space in it).
fn password_in(text: &str) -> Option<&str> {
    let after_scheme = &text[text.find("://")? + 3..];
    let userinfo = &after_scheme[..after_scheme.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

/// `text` with the password of each well-formed `scheme://user:password@host` replaced.
fn hide_url_passwords(text: &str) -> String {
    let mut hidden = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        hidden.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '\'' | '"' | '`' | ','))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        hidden.push_str(&userinfo[..=colon]);
                        hidden.push_str(HIDDEN);
                    }
                    None => hidden.push_str(userinfo),
                }
                hidden.push_str(&authority[at..]);
            }
            None => hidden.push_str(authority),
        }
        rest = &tail[end..];
    }
    hidden.push_str(rest);
    hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(texts: &[&str]) -> Secrets {
        Secrets::from_texts(texts.iter().map(|text| text.to_string()))
    }

    #[test]
    fn passwords_of_urls_are_hidden_wherever_they_appear() {
        let secrets = secrets(&["--url", "redis://:hunter2@10.0.0.1:6379", "status"]);
        assert_eq!(
            secrets.hide("error: unexpected argument 'redis://:hunter2@10.0.0.1:6379' found"),
            "error: unexpected argument 'redis://:***@10.0.0.1:6379' found"
        );
        assert_eq!(secrets.hide("hunter2 alone"), "*** alone");
    }

    #[test]
    fn broken_urls_give_up_their_password_too() {
        let secrets = secrets(&[
            "--url=redis://app:pass/with space@host:port",
            "redis://nopass@host",
        ]);
        assert_eq!(secrets.passwords, ["pass/with space"]);
        assert_eq!(
            secrets.hide("'redis://app:pass/with space@host:port'"),
            "'redis://app:***@host:port'"
        );
    }

    #[test]
    fn urls_not_given_are_hidden_by_shape() {
        let secrets = Secrets::default();
        assert_eq!(
            secrets.hide("a redis://u:p@h:1/0, rediss://:x@y and redis://h:2"),
            "a redis://u:***@h:1/0, rediss://:***@y and redis://h:2"
        );
    }
}
