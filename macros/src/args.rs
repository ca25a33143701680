//! The arguments of `#[singleton(..)]`, checked at compile time.
//!
//! ```text
//! #[singleton(key = "daily-email", ttl = "10m")]
//! #[singleton(key = "daily-email", ttl = "10m", crate = "::my_facade")]
//! ```
//!
//! Every value keeps its span, so a bad value is reported on its own token. Errors are collected
//! and combined rather than stopping at the first, so one build shows every bad argument.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, Lit, LitStr, Path, Token};

/// The error for an argument we don't know; it lists exactly the accepted ones.
const UNKNOWN_ARGUMENT: &str = "unknown `singleton` argument; expected `key`, `ttl`, or `crate`";
const KEY_NOT_A_STRING: &str = "`key` must be a string literal like \"daily-email\"";
const KEY_EMPTY: &str = "`key` must not be empty";
const TTL_NOT_A_DURATION: &str = "`ttl` must be a duration string like \"30s\", \"10m\" or \"1h\"";
const TTL_ZERO: &str = "`ttl` must be greater than zero";
const CRATE_NOT_A_PATH: &str = "`crate` must be a path like \"::cluster_singleton\"";

/// The longest lease Redis accepts: `PX` takes a signed 64-bit number of milliseconds.
const MAX_TTL_MILLIS: u128 = i64::MAX as u128;
const NANOS_PER_MILLI: u32 = 1_000_000;

/// The checked arguments of one `#[singleton(..)]`.
pub(crate) struct Args {
    pub(crate) key: Key,
    pub(crate) ttl: Ttl,
    /// Where the facade lives: `crate = "..."`, else `::cluster_singleton`.
    pub(crate) krate: Path,
}

/// Arguments that did not check out: the errors, and what the expansion needs to go on anyway.
pub(crate) struct Invalid {
    /// The `crate = "..."` path if it was valid, so the fallback expansion names the same
    /// `Outcome` as the caller expects and adds no error of its own.
    pub(crate) krate: Path,
    pub(crate) error: syn::Error,
}

/// `key = "..."`: the name of the lock.
pub(crate) struct Key {
    lit: LitStr,
}

impl Key {
    /// The `&str` expression that names the lock in the generated code.
    ///
    /// This is the one place that turns a key into code: today the literal itself; once keys
    /// take `{param}` placeholders it becomes a `format!` over the function's parameters.
    pub(crate) fn expr(&self) -> TokenStream {
        self.lit.to_token_stream()
    }

    /// The key as written, without quotes.
    #[cfg(test)]
    pub(crate) fn value(&self) -> String {
        self.lit.value()
    }
}

/// `ttl = "..."`: how long the lock lives in Redis, in whole milliseconds.
pub(crate) struct Ttl {
    pub(crate) millis: u64,
    /// The literal, to report checks against later arguments (such as `min_hold <= ttl`) on it.
    #[expect(dead_code, reason = "no argument is checked against `ttl` yet")]
    pub(crate) span: Span,
}

impl Args {
    /// Parses and checks the tokens between the parentheses of `#[singleton(..)]`.
    pub(crate) fn parse(args: TokenStream) -> Result<Args, Invalid> {
        let mut builder = Builder::default();
        let parsed = syn::meta::parser(|meta| builder.parse(meta)).parse2(args.clone());
        if let Err(error) = parsed {
            // A syntax error (a missing `,`, `key` without a value): the rest was not read.
            builder.stopped_early = true;
            builder.push(error);
        }
        builder.finish(&args)
    }
}

/// What one argument looked like once read.
#[derive(Default)]
enum Seen<T> {
    #[default]
    Absent,
    /// Given, but its value was wrong (the error is already recorded).
    Invalid,
    Valid(T),
}

impl<T> Seen<T> {
    fn from_result(result: syn::Result<T>, errors: &mut Option<syn::Error>) -> Seen<T> {
        match result {
            Ok(value) => Seen::Valid(value),
            Err(error) => {
                push(errors, error);
                Seen::Invalid
            }
        }
    }

    fn is_absent(&self) -> bool {
        matches!(self, Seen::Absent)
    }

    fn valid(self) -> Option<T> {
        match self {
            Seen::Valid(value) => Some(value),
            Seen::Absent | Seen::Invalid => None,
        }
    }
}

#[derive(Default)]
struct Builder {
    key: Seen<Key>,
    ttl: Seen<Ttl>,
    krate: Seen<Path>,
    /// An unknown argument may be a misspelt required one: don't also call that one missing.
    saw_unknown: bool,
    /// Parsing stopped at a syntax error, so a missing argument may just be unread.
    stopped_early: bool,
    errors: Option<syn::Error>,
}

impl Builder {
    fn parse(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        if meta.path.is_ident("key") {
            // key = "daily-email"
            let value = value(&meta, "key", "key = \"daily-email\"")?;
            if self.key.is_absent() {
                self.key = Seen::from_result(parse_key(&value), &mut self.errors);
            } else {
                self.push(meta.error("duplicate `key` argument"));
            }
        } else if meta.path.is_ident("ttl") {
            // ttl = "10m"
            let value = value(&meta, "ttl", "ttl = \"10m\"")?;
            if self.ttl.is_absent() {
                self.ttl = Seen::from_result(parse_ttl(&value), &mut self.errors);
            } else {
                self.push(meta.error("duplicate `ttl` argument"));
            }
        } else if meta.path.is_ident("crate") {
            // crate = "::cluster_singleton"
            let value = value(&meta, "crate", "crate = \"::cluster_singleton\"")?;
            if self.krate.is_absent() {
                self.krate = Seen::from_result(parse_crate(&value), &mut self.errors);
            } else {
                self.push(meta.error("duplicate `crate` argument"));
            }
        } else {
            // The caret goes on the name alone, so take the error before reading past it.
            let error = meta.error(UNKNOWN_ARGUMENT);
            skip_value(&meta)?;
            self.saw_unknown = true;
            self.push(error);
        }
        Ok(())
    }

    fn push(&mut self, error: syn::Error) {
        push(&mut self.errors, error);
    }

    fn finish(mut self, args: &TokenStream) -> Result<Args, Invalid> {
        if !self.saw_unknown && !self.stopped_early {
            let missing = match (self.key.is_absent(), self.ttl.is_absent()) {
                (true, true) => Some(
                    "missing `key` and `ttl` arguments; \
                     write `#[singleton(key = \"job-name\", ttl = \"10m\")]`",
                ),
                (true, false) => Some("missing `key` argument; add `key = \"job-name\"`"),
                (false, true) => Some("missing `ttl` argument; add `ttl = \"10m\"`"),
                (false, false) => None,
            };
            if let Some(message) = missing {
                // On all the arguments; with none, `new_spanned` falls back to the call site.
                self.push(syn::Error::new_spanned(args, message));
            }
        }

        let krate = self.krate.valid().unwrap_or_else(default_crate);
        match (self.key.valid(), self.ttl.valid(), self.errors) {
            (Some(key), Some(ttl), None) => Ok(Args { key, ttl, krate }),
            (_, _, Some(error)) => Err(Invalid { krate, error }),
            // Every way to lose `key` or `ttl` records an error above; this keeps the macro
            // from panicking should that ever stop being true.
            (_, _, None) => Err(Invalid {
                krate,
                error: syn::Error::new(
                    Span::call_site(),
                    "expected `#[singleton(key = \"job-name\", ttl = \"10m\")]`",
                ),
            }),
        }
    }
}

fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}

/// `::cluster_singleton`, the facade's name on crates.io.
fn default_crate() -> Path {
    let mut path = Path::from(syn::Ident::new("cluster_singleton", Span::call_site()));
    path.leading_colon = Some(<Token![::]>::default());
    path
}

/// Reads the value after `name =`. Any expression is accepted here, so that a value of the
/// wrong kind (`ttl = 600`) gets our message and parsing goes on to the next argument.
fn value(meta: &ParseNestedMeta, name: &str, example: &str) -> syn::Result<Expr> {
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format_args!("`{name}` needs a value; write `{example}`")));
    }
    meta.value()?.parse()
}

/// Steps over whatever follows an unknown argument's name, up to the next `,`.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    meta.input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((token, next)) = rest.token_tree() {
            if matches!(&token, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// The string literal in `expr`, looking through the invisible group that a `macro_rules!`
/// `$value:expr` puts around it.
fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) if lit.suffix().is_empty() => Some(lit),
        Expr::Group(group) => string_literal(&group.expr),
        _ => None,
    }
}

fn parse_key(value: &Expr) -> syn::Result<Key> {
    let lit =
        string_literal(value).ok_or_else(|| syn::Error::new_spanned(value, KEY_NOT_A_STRING))?;
    // `{` and `}` are kept literally for now; `{param}` placeholders will be parsed here.
    if lit.value().is_empty() {
        return Err(syn::Error::new(lit.span(), KEY_EMPTY));
    }
    Ok(Key { lit: lit.clone() })
}

fn parse_ttl(value: &Expr) -> syn::Result<Ttl> {
    let lit =
        string_literal(value).ok_or_else(|| syn::Error::new_spanned(value, TTL_NOT_A_DURATION))?;
    let millis =
        ttl_millis(&lit.value()).map_err(|message| syn::Error::new(lit.span(), message))?;
    Ok(Ttl {
        millis,
        span: lit.span(),
    })
}

/// Turns a humantime duration ("500ms", "30s", "10m", "1h", "1h 30m", "1h30m") into the whole
/// number of milliseconds that Redis `PX` takes.
fn ttl_millis(text: &str) -> Result<u64, String> {
    let out_of_range =
        || format!("`ttl` is out of range; it must be between 1ms and {MAX_TTL_MILLIS}ms");
    let duration = match humantime::parse_duration(text) {
        Ok(duration) => duration,
        // Too large, or finer than a nanosecond ("0.5ns"): both outside what `PX` can hold.
        Err(humantime::DurationError::NumberOverflow) => return Err(out_of_range()),
        Err(_) => return Err(TTL_NOT_A_DURATION.to_owned()),
    };
    if duration.is_zero() {
        return Err(TTL_ZERO.to_owned());
    }
    if !duration.subsec_nanos().is_multiple_of(NANOS_PER_MILLI) {
        return Err(format!(
            "`ttl` must be a whole number of milliseconds, the precision of Redis `PX`, not {}",
            Millis(duration),
        ));
    }
    let millis = duration.as_millis();
    if millis > MAX_TTL_MILLIS {
        return Err(out_of_range());
    }
    u64::try_from(millis).map_err(|_| out_of_range())
}

/// Shows a sub-millisecond duration in milliseconds, like `1.5ms`.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self.0.as_nanos();
        let per_milli = u128::from(NANOS_PER_MILLI);
        let fraction = format!("{:06}", nanos % per_milli);
        let fraction = fraction.trim_end_matches('0');
        write!(f, "{}.{fraction}ms", nanos / per_milli)
    }
}

fn parse_crate(value: &Expr) -> syn::Result<Path> {
    let error = || syn::Error::new_spanned(value, CRATE_NOT_A_PATH);
    let lit = string_literal(value).ok_or_else(error)?;
    // Mod-style: a path to a module, without generic arguments. Its tokens carry the literal's
    // span, so a path that does not resolve is reported on the literal.
    lit.parse_with(Path::parse_mod_style).map_err(|_| error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(args: TokenStream) -> Result<Args, Invalid> {
        Args::parse(args)
    }

    /// The messages of every error, in order.
    fn errors(args: TokenStream) -> Vec<String> {
        match parse(args) {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn path_string(path: &Path) -> String {
        path.to_token_stream().to_string()
    }

    #[test]
    fn key_and_ttl() {
        let args = parse(quote!(key = "daily-email", ttl = "10m"))
            .ok()
            .unwrap();
        assert_eq!(args.key.value(), "daily-email");
        assert_eq!(args.ttl.millis, 600_000);
        assert_eq!(path_string(&args.krate), ":: cluster_singleton");
    }

    #[test]
    fn any_order_and_trailing_comma() {
        let args = parse(quote!(ttl = "30s", key = "k",)).ok().unwrap();
        assert_eq!(args.key.value(), "k");
        assert_eq!(args.ttl.millis, 30_000);
    }

    #[test]
    fn braces_in_key_are_literal_for_now() {
        let args = parse(quote!(key = "report-{day}", ttl = "1h"))
            .ok()
            .unwrap();
        assert_eq!(args.key.value(), "report-{day}");
        assert_eq!(args.key.expr().to_string(), "\"report-{day}\"");
    }

    #[test]
    fn raw_string_key() {
        let args = parse(quote!(key = r"a\b", ttl = "1s")).ok().unwrap();
        assert_eq!(args.key.value(), "a\\b");
    }

    #[test]
    fn crate_override() {
        let args = parse(quote!(key = "k", ttl = "1s", crate = "::my_singleton"))
            .ok()
            .unwrap();
        assert_eq!(path_string(&args.krate), ":: my_singleton");
        let args = parse(quote!(key = "k", ttl = "1s", crate = "renamed"))
            .ok()
            .unwrap();
        assert_eq!(path_string(&args.krate), "renamed");
        let args = parse(quote!(key = "k", ttl = "1s", crate = "crate::facade"))
            .ok()
            .unwrap();
        assert_eq!(path_string(&args.krate), "crate :: facade");
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(ttl_millis("500ms"), Ok(500));
        assert_eq!(ttl_millis("30s"), Ok(30_000));
        assert_eq!(ttl_millis("10m"), Ok(600_000));
        assert_eq!(ttl_millis("1h"), Ok(3_600_000));
        assert_eq!(ttl_millis("1h 30m"), Ok(5_400_000));
        // humantime needs no space between the parts.
        assert_eq!(ttl_millis("1h30m"), Ok(5_400_000));
        assert_eq!(ttl_millis("1.5s"), Ok(1_500));
        assert_eq!(ttl_millis("2000us"), Ok(2));
        assert_eq!(ttl_millis("1d"), Ok(86_400_000));
    }

    #[test]
    fn ttl_limits() {
        assert_eq!(ttl_millis("9223372036854775.807s"), Ok(i64::MAX as u64));
        assert_eq!(ttl_millis("9223372036854775s 807ms"), Ok(i64::MAX as u64));
        let out_of_range =
            "`ttl` is out of range; it must be between 1ms and 9223372036854775807ms";
        assert_eq!(
            ttl_millis("9223372036854775.808s").unwrap_err(),
            out_of_range
        );
        // humantime itself stops at 2^64 ns for sub-second units (about 584 years).
        assert_eq!(
            ttl_millis("9223372036854775807ms").unwrap_err(),
            out_of_range
        );
        assert_eq!(
            ttl_millis("99999999999999999999999h").unwrap_err(),
            out_of_range
        );
        assert_eq!(
            ttl_millis("18446744073709551615s").unwrap_err(),
            out_of_range
        );
        assert_eq!(ttl_millis("300000000y").unwrap_err(), out_of_range);
        assert_eq!(ttl_millis("0.5ns").unwrap_err(), out_of_range);
    }

    #[test]
    fn ttl_mistakes() {
        assert_eq!(ttl_millis("10x").unwrap_err(), TTL_NOT_A_DURATION);
        assert_eq!(ttl_millis("").unwrap_err(), TTL_NOT_A_DURATION);
        assert_eq!(ttl_millis("   ").unwrap_err(), TTL_NOT_A_DURATION);
        assert_eq!(ttl_millis("10").unwrap_err(), TTL_NOT_A_DURATION);
        assert_eq!(ttl_millis("-1s").unwrap_err(), TTL_NOT_A_DURATION);
        assert_eq!(ttl_millis("0s").unwrap_err(), TTL_ZERO);
        assert_eq!(ttl_millis("0ms 0s").unwrap_err(), TTL_ZERO);
        assert_eq!(
            ttl_millis("1500us").unwrap_err(),
            "`ttl` must be a whole number of milliseconds, the precision of Redis `PX`, not 1.5ms"
        );
        assert_eq!(
            ttl_millis("1ns").unwrap_err(),
            "`ttl` must be a whole number of milliseconds, the precision of Redis `PX`, not 0.000001ms"
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(errors(quote!(key = 5, ttl = "1s")), [KEY_NOT_A_STRING]);
        assert_eq!(
            errors(quote!(key = daily_email, ttl = "1s")),
            [KEY_NOT_A_STRING]
        );
        assert_eq!(errors(quote!(key = b"k", ttl = "1s")), [KEY_NOT_A_STRING]);
        assert_eq!(errors(quote!(key = "", ttl = "1s")), [KEY_EMPTY]);
        assert_eq!(errors(quote!(key = "k", ttl = 600)), [TTL_NOT_A_DURATION]);
        assert_eq!(errors(quote!(key = "k", ttl = "10x")), [TTL_NOT_A_DURATION]);
        assert_eq!(errors(quote!(key = "k", ttl = "0s")), [TTL_ZERO]);
        for bad in [
            quote!("not a path"),
            quote!(""),
            quote!(5),
            quote!("a<T>"),
            quote!(foo),
        ] {
            assert_eq!(
                errors(quote!(key = "k", ttl = "1s", crate = #bad)),
                [CRATE_NOT_A_PATH]
            );
        }
    }

    #[test]
    fn every_bad_value_is_reported() {
        assert_eq!(
            errors(quote!(key = "", ttl = "10x", crate = "not a path")),
            [KEY_EMPTY, TTL_NOT_A_DURATION, CRATE_NOT_A_PATH]
        );
    }

    #[test]
    fn missing() {
        assert_eq!(
            errors(quote!()),
            ["missing `key` and `ttl` arguments; write `#[singleton(key = \"job-name\", ttl = \"10m\")]`"]
        );
        assert_eq!(
            errors(quote!(ttl = "10m")),
            ["missing `key` argument; add `key = \"job-name\"`"]
        );
        assert_eq!(
            errors(quote!(key = "k")),
            ["missing `ttl` argument; add `ttl = \"10m\"`"]
        );
        // A bad value is not also missing.
        assert_eq!(errors(quote!(key = "k", ttl = 600)), [TTL_NOT_A_DURATION]);
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            errors(quote!(key = "a", key = "b", ttl = "1s")),
            ["duplicate `key` argument"]
        );
        assert_eq!(
            errors(quote!(key = "a", ttl = "1s", ttl = "2s")),
            ["duplicate `ttl` argument"]
        );
        assert_eq!(
            errors(quote!(key = "a", ttl = "1s", crate = "a", crate = "b")),
            ["duplicate `crate` argument"]
        );
    }

    #[test]
    fn unknown() {
        // A misspelt argument is not reported as missing as well.
        assert_eq!(errors(quote!(key = "a", tll = "1s")), [UNKNOWN_ARGUMENT]);
        assert_eq!(
            errors(quote!(
                retries = 3,
                key = "a",
                ttl = "1s",
                wait(1),
                fast,
                a::b = 1
            )),
            [UNKNOWN_ARGUMENT; 4]
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            errors(quote!(key, ttl = "1s")),
            ["`key` needs a value; write `key = \"daily-email\"`"]
        );
        assert_eq!(errors(quote!(key = "a" ttl = "1s")), ["expected `,`"]);
        assert_eq!(
            errors(quote!("a", ttl = "1s")),
            ["unexpected literal in nested attribute, expected ident"]
        );
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        let odd = [
            quote!(,),
            quote!(= "k"),
            quote!(key = "k",, ttl = "1s"),
            quote!(key = "k"; ttl = "1s"),
            quote!(key = , ttl = "1s"),
            quote!(key = "k", ttl = "1s", crate = "::"),
            quote!(key = "k", ttl = "1s", crate = "a::"),
            quote!(key = "k", ttl = "1s" "2s"),
            quote!(key::path = "k"),
            quote!(key("k"), ttl = "1s"),
            quote!(key = "k", ttl = "\u{0}"),
            quote!(key = "k", ttl = "1s" + "2s"),
            quote!(
                key = "k",
                ttl = "99999999999999999999999999999999999999999999999ms"
            ),
        ];
        for args in odd {
            assert!(!errors(args.clone()).is_empty(), "accepted {args}");
        }
    }

    #[test]
    fn crate_survives_other_errors() {
        let Err(invalid) = parse(quote!(key = "", ttl = "1s", crate = "renamed")) else {
            panic!("expected an error");
        };
        assert_eq!(path_string(&invalid.krate), "renamed");
        let Err(invalid) = parse(quote!(key = "k", ttl = "1s", crate = "not a path")) else {
            panic!("expected an error");
        };
        assert_eq!(path_string(&invalid.krate), ":: cluster_singleton");
    }
}
