//! The arguments of `#[singleton(..)]`, checked at compile time.
//!
//! ```text
//! #[singleton(key = "daily-email", ttl = "10m")]
//! #[singleton(key = "invoice:{customer_id}", ttl = "10m", wait = "30s", max_hold = "2h")]
//! #[singleton(key = "k", ttl = "10m", renew = false, on_lost = "continue", min_hold = "5m")]
//! #[singleton(key = "daily-email", ttl = "10m", crate = "::my_facade")]
//! #[singleton(key = "daily-email", ttl = LOCK_TTL, min_hold = crate::settings::MIN_HOLD)]
//! ```
//!
//! Every value keeps its span, so a bad value is reported on its own token, and a value that
//! does not fit another (`min_hold` longer than `ttl`) on the one that has to change. Errors are
//! collected and combined rather than stopping at the first, so one build shows every bad
//! argument.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, Lit, LitStr, Path, Token};

use crate::key::{Key, Parameters};

/// The error for an argument we don't know; it lists exactly the accepted ones.
const UNKNOWN_ARGUMENT: &str = "unknown `singleton` argument; expected `key`, `ttl`, `wait`, \
                                `renew`, `max_hold`, `on_lost`, `min_hold`, `slot`, `fencing`, \
                                or `crate`";
const KEY_NOT_A_STRING: &str = "`key` must be a string literal like \"daily-email\"";
const ON_LOST_NOT_A_MODE: &str = "`on_lost` must be \"cancel\" or \"continue\"";
const MAX_HOLD_WITHOUT_RENEWAL: &str = "`max_hold` has no effect with `renew = false`";
const CRATE_NOT_A_PATH: &str = "`crate` must be a path like \"::cluster_singleton\"";

/// The longest lease Redis accepts: `PX` takes a signed 64-bit number of milliseconds.
pub(crate) const MAX_TTL_MILLIS: u128 = i64::MAX as u128;
pub(crate) const NANOS_PER_MILLI: u32 = 1_000_000;

/// The checked arguments of one `#[singleton(..)]`. The options are `None` when not given, so
/// that the expansion leaves them to the runtime's defaults.
pub(crate) struct Args {
    pub(crate) key: Key,
    pub(crate) ttl: Time,
    pub(crate) wait: Option<Time>,
    pub(crate) renew: Option<bool>,
    pub(crate) max_hold: Option<Time>,
    pub(crate) on_lost: Option<OnLost>,
    pub(crate) min_hold: Option<Time>,
    pub(crate) slot: Option<Time>,
    pub(crate) fencing: Option<bool>,
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

/// A duration argument (`ttl = "10m"` or `ttl = LOCK_TTL`, `wait`, `max_hold`, `min_hold`,
/// `slot`).
pub(crate) struct Time {
    pub(crate) value: TimeValue,
    /// As written, to quote in errors about other arguments: "at least the `ttl` (10m)", "at
    /// least the `ttl` (LOCK_TTL)".
    pub(crate) shown: String,
    /// The literal, or the path's last segment: where checks against other arguments
    /// (`min_hold <= ttl`) are reported, here or, for a path, by the compiler.
    pub(crate) span: Span,
}

/// What a duration argument holds.
pub(crate) enum TimeValue {
    /// A string literal, checked here, in the whole milliseconds that Redis `PX` takes.
    Millis(u64),
    /// The path of a `const` `Duration` (`LOCK_TTL`, `crate::settings::LOCK_TTL`,
    /// `Self::TTL`): its type and value are not known to a macro, so the expansion has the
    /// compiler check both, in a `const` block, against the same rules as a literal.
    Const(Box<syn::ExprPath>),
}

impl Time {
    /// The milliseconds of a literal; `None` for a path, known only to the compiler.
    pub(crate) fn millis(&self) -> Option<u64> {
        match self.value {
            TimeValue::Millis(millis) => Some(millis),
            TimeValue::Const(_) => None,
        }
    }

    pub(crate) fn is_const(&self) -> bool {
        matches!(self.value, TimeValue::Const(_))
    }
}

/// `on_lost = "..."`: what happens to a body whose lease is lost while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnLost {
    Cancel,
    Continue,
}

impl Args {
    /// Parses and checks the tokens between the parentheses of `#[singleton(..)]`, on a
    /// function whose parameters `key` placeholders may name.
    pub(crate) fn parse(args: TokenStream, params: &Parameters) -> Result<Args, Invalid> {
        let mut builder = Builder::default();
        let parsed = syn::meta::parser(|meta| builder.parse(meta, params)).parse2(args.clone());
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

    fn as_valid(&self) -> Option<&T> {
        match self {
            Seen::Valid(value) => Some(value),
            Seen::Absent | Seen::Invalid => None,
        }
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
    ttl: Seen<Time>,
    wait: Seen<Time>,
    renew: Seen<bool>,
    max_hold: Seen<Time>,
    on_lost: Seen<OnLost>,
    min_hold: Seen<Time>,
    slot: Seen<Time>,
    fencing: Seen<bool>,
    krate: Seen<Path>,
    /// An unknown argument may be a misspelt required one: don't also call that one missing.
    saw_unknown: bool,
    /// Parsing stopped at a syntax error, so a missing argument may just be unread.
    stopped_early: bool,
    errors: Option<syn::Error>,
}

impl Builder {
    fn parse(&mut self, meta: ParseNestedMeta, params: &Parameters) -> syn::Result<()> {
        let name = meta.path.get_ident().map(ToString::to_string);
        let name = name.as_deref().unwrap_or_default();
        let mut arg = Argument {
            meta: &meta,
            name,
            errors: &mut self.errors,
        };
        match name {
            // key = "daily-email", or with placeholders: key = "invoice:{customer_id}"
            "key" => arg.read(&mut self.key, "\"daily-email\"", |value| {
                parse_key(value, params)
            }),
            // ttl = "10m"
            "ttl" => arg.duration(&mut self.ttl, "10m"),
            // wait = "30s"
            "wait" => arg.duration(&mut self.wait, "30s"),
            // renew = false (or `true`, the default)
            "renew" => arg.read(&mut self.renew, "false", |value| parse_bool("renew", value)),
            // max_hold = "1h"
            "max_hold" => arg.duration(&mut self.max_hold, "1h"),
            // on_lost = "cancel" (the default), on_lost = "continue"
            "on_lost" => arg.read(&mut self.on_lost, "\"continue\"", parse_on_lost),
            // min_hold = "1m"
            "min_hold" => arg.duration(&mut self.min_hold, "1m"),
            // slot = "1d"
            "slot" => arg.duration(&mut self.slot, "1d"),
            // fencing = true (or `false`, the default)
            "fencing" => arg.read(&mut self.fencing, "true", |value| {
                parse_bool("fencing", value)
            }),
            // crate = "::cluster_singleton"
            "crate" => arg.read(&mut self.krate, "\"::cluster_singleton\"", parse_crate),
            _ => {
                // The caret goes on the name alone, so take the error before reading past it.
                let error = meta.error(UNKNOWN_ARGUMENT);
                skip_value(&meta)?;
                self.saw_unknown = true;
                self.push(error);
                Ok(())
            }
        }
    }

    fn push(&mut self, error: syn::Error) {
        push(&mut self.errors, error);
    }

    fn finish(mut self, args: &TokenStream) -> Result<Args, Invalid> {
        self.check_missing(args);
        self.check_max_hold();
        self.check_min_hold();

        let krate = self.krate.valid().unwrap_or_else(default_crate);
        match (self.key.valid(), self.ttl.valid(), self.errors) {
            (Some(key), Some(ttl), None) => Ok(Args {
                key,
                ttl,
                wait: self.wait.valid(),
                renew: self.renew.valid(),
                max_hold: self.max_hold.valid(),
                on_lost: self.on_lost.valid(),
                min_hold: self.min_hold.valid(),
                slot: self.slot.valid(),
                fencing: self.fencing.valid(),
                krate,
            }),
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

    /// `key` and `ttl` are required.
    fn check_missing(&mut self, args: &TokenStream) {
        if self.saw_unknown || self.stopped_early {
            return;
        }
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

    /// `max_hold` bounds renewal: it means nothing without it, and a bound below one `ttl` would
    /// be reached before the first renewal could matter.
    fn check_max_hold(&mut self) {
        let Some(max_hold) = self.max_hold.as_valid() else {
            return;
        };
        let error = if matches!(self.renew, Seen::Valid(false)) {
            syn::Error::new(max_hold.span, MAX_HOLD_WITHOUT_RENEWAL)
        } else {
            // With a path on either side, the expansion has the compiler compare them.
            let Some(ttl) = self.ttl.as_valid() else {
                return;
            };
            match (max_hold.millis(), ttl.millis()) {
                (Some(max_hold_millis), Some(ttl_millis)) if max_hold_millis < ttl_millis => {
                    syn::Error::new(max_hold.span, max_hold_below_ttl(ttl))
                }
                _ => return,
            }
        };
        push(&mut self.errors, error);
    }

    /// `min_hold` keeps the key after the body, which the key's own `ttl` must cover.
    fn check_min_hold(&mut self) {
        let (Some(min_hold), Some(ttl)) = (self.min_hold.as_valid(), self.ttl.as_valid()) else {
            return;
        };
        // With a path on either side, the expansion has the compiler compare them.
        if let (Some(min_hold_millis), Some(ttl_millis)) = (min_hold.millis(), ttl.millis()) {
            if min_hold_millis > ttl_millis {
                let error = syn::Error::new(min_hold.span, min_hold_above_ttl(ttl));
                push(&mut self.errors, error);
            }
        }
    }
}

fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}

/// One `name = value` being read.
struct Argument<'a> {
    meta: &'a ParseNestedMeta<'a>,
    name: &'a str,
    errors: &'a mut Option<syn::Error>,
}

impl Argument<'_> {
    /// Reads the value into `slot` with `parse`, or reports the argument as a duplicate if it
    /// was given before. `example` is a value to show should it have none.
    fn read<T>(
        &mut self,
        slot: &mut Seen<T>,
        example: &str,
        parse: impl FnOnce(&Expr) -> syn::Result<T>,
    ) -> syn::Result<()> {
        let value = value(self.meta, self.name, example)?;
        if slot.is_absent() {
            *slot = Seen::from_result(parse(&value), self.errors);
        } else {
            // After the value, so the caret covers `key = "b"`.
            let error = self
                .meta
                .error(format_args!("duplicate `{}` argument", self.name));
            push(self.errors, error);
        }
        Ok(())
    }

    /// Reads a duration, like `example`.
    fn duration(&mut self, slot: &mut Seen<Time>, example: &str) -> syn::Result<()> {
        let name = self.name;
        self.read(slot, &format!("\"{example}\""), |value| {
            parse_time(name, value)
        })
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
        return Err(meta.error(format_args!(
            "`{name}` needs a value; write `{name} = {example}`"
        )));
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

/// The literal in `expr`, looking through the invisible group that a `macro_rules!`
/// `$value:expr` puts around it.
fn literal(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(syn::ExprLit { lit, .. }) => Some(lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}

/// The string literal in `expr`, without a suffix.
fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match literal(expr) {
        Some(Lit::Str(lit)) if lit.suffix().is_empty() => Some(lit),
        _ => None,
    }
}

fn parse_key(value: &Expr, params: &Parameters) -> syn::Result<Key> {
    let lit =
        string_literal(value).ok_or_else(|| syn::Error::new_spanned(value, KEY_NOT_A_STRING))?;
    Key::parse(lit, params)
}

/// `name = "10m"` or `name = LOCK_TTL`: a duration, for `ttl`, `wait`, `max_hold`, `min_hold`
/// and `slot` alike.
fn parse_time(name: &str, value: &Expr) -> syn::Result<Time> {
    if let Some(path) = const_path(value) {
        // The name itself (`LOCK_TTL` in `crate::settings::LOCK_TTL`): a span cannot cover
        // several tokens on stable Rust.
        let span = path
            .path
            .segments
            .last()
            .map_or_else(Span::call_site, |segment| segment.ident.span());
        return Ok(Time {
            shown: path_text(path),
            span,
            value: TimeValue::Const(Box::new(path.clone())),
        });
    }
    let lit = string_literal(value)
        .ok_or_else(|| syn::Error::new_spanned(value, not_a_duration_or_path(name)))?;
    let written = lit.value();
    let millis = millis(name, &written).map_err(|message| syn::Error::new(lit.span(), message))?;
    Ok(Time {
        value: TimeValue::Millis(millis),
        shown: written,
        span: lit.span(),
    })
}

/// The path in `expr` (`LOCK_TTL`, `crate::settings::LOCK_TTL`), looking through the invisible
/// group that a `macro_rules!` `$value:expr` puts around it.
fn const_path(expr: &Expr) -> Option<&syn::ExprPath> {
    match expr {
        Expr::Path(path) if path.attrs.is_empty() => Some(path),
        Expr::Group(group) => const_path(&group.expr),
        _ => None,
    }
}

/// A path as the user wrote it, without the spaces between tokens: `crate::settings::LOCK_TTL`.
fn path_text(path: &syn::ExprPath) -> String {
    use quote::ToTokens;
    path.to_token_stream()
        .to_string()
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace(" >", ">")
}

fn not_a_duration(name: &str) -> String {
    format!("`{name}` must be a duration string like \"30s\", \"10m\" or \"1h\"")
}

/// For a value that is neither a string nor a path, which may have been meant as either.
fn not_a_duration_or_path(name: &str) -> String {
    format!(
        "`{name}` must be a duration string like \"30s\", \"10m\" or \"1h\", or the path of a \
         `const` `Duration` like `LOCK_TTL`"
    )
}

/// `max_hold` shorter than `ttl`: the same words for literals, checked here, and paths, checked
/// by the compiler.
pub(crate) fn max_hold_below_ttl(ttl: &Time) -> String {
    format!("`max_hold` must be at least the `ttl` ({})", ttl.shown)
}

/// `min_hold` longer than `ttl`, in the same words for literals and paths.
pub(crate) fn min_hold_above_ttl(ttl: &Time) -> String {
    format!("`min_hold` must not exceed the `ttl` ({})", ttl.shown)
}

/// The messages for a `const` at `path`, given as `name`, that breaks one of the rules that
/// [`millis`] checks for a literal: zero, not whole milliseconds, longer than `PX` takes. The
/// expansion has the compiler check them (see `expand::checked_consts`).
pub(crate) fn const_rule_messages(name: &str, path: &str) -> [String; 3] {
    [
        format!(
            "`{name}` must be greater than zero, and `{path}` is zero; give it a duration of at \
             least 1ms"
        ),
        format!(
            "`{name}` must be a whole number of milliseconds, the precision of Redis `PX`, and \
             `{path}` is not; build it with `Duration::from_millis` or `Duration::from_secs`"
        ),
        format!(
            "`{name}` is out of range; it must be between 1ms and {MAX_TTL_MILLIS}ms, and `{path}` \
             is longer"
        ),
    ]
}

/// Turns the humantime duration ("500ms", "30s", "10m", "1h", "1h 30m", "1h30m") given as
/// `name` into the whole number of milliseconds that Redis `PX` takes.
fn millis(name: &str, text: &str) -> Result<u64, String> {
    let out_of_range =
        || format!("`{name}` is out of range; it must be between 1ms and {MAX_TTL_MILLIS}ms");
    let duration = match humantime::parse_duration(text) {
        Ok(duration) => duration,
        // Too large, or finer than a nanosecond ("0.5ns"): both outside what `PX` can hold.
        Err(humantime::DurationError::NumberOverflow) => return Err(out_of_range()),
        Err(_) => return Err(not_a_duration(name)),
    };
    if duration.is_zero() {
        return Err(format!("`{name}` must be greater than zero"));
    }
    if !duration.subsec_nanos().is_multiple_of(NANOS_PER_MILLI) {
        return Err(format!(
            "`{name}` must be a whole number of milliseconds, the precision of Redis `PX`, not {}",
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

/// `renew = false`, `fencing = true`: a bool literal. A string that spells one is the likely
/// slip, since most other arguments are strings.
fn parse_bool(name: &str, value: &Expr) -> syn::Result<bool> {
    match literal(value) {
        Some(Lit::Bool(lit)) => Ok(lit.value),
        Some(Lit::Str(lit)) if matches!(lit.value().as_str(), "true" | "false") => {
            Err(syn::Error::new(
                lit.span(),
                format!(
                    "`{name}` takes a bool, not a string; write `{name} = {}`",
                    lit.value()
                ),
            ))
        }
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{name}` must be `true` or `false`"),
        )),
    }
}

/// `on_lost = "cancel"` or `on_lost = "continue"`.
fn parse_on_lost(value: &Expr) -> syn::Result<OnLost> {
    let error = || syn::Error::new_spanned(value, ON_LOST_NOT_A_MODE);
    let lit = string_literal(value).ok_or_else(error)?;
    match lit.value().as_str() {
        "cancel" => Ok(OnLost::Cancel),
        "continue" => Ok(OnLost::Continue),
        _ => Err(error()),
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
    use crate::key::KEY_EMPTY;
    use quote::{quote, ToTokens};

    fn parse(args: TokenStream) -> Result<Args, Invalid> {
        Args::parse(args, &Parameters::default())
    }

    /// The messages of every error, in order.
    fn errors(args: TokenStream) -> Vec<String> {
        errors_with(args, &Parameters::default())
    }

    fn errors_with(args: TokenStream, params: &Parameters) -> Vec<String> {
        match Args::parse(args, params) {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn ttl_not_a_duration() -> String {
        not_a_duration("ttl")
    }

    const TTL_ZERO: &str = "`ttl` must be greater than zero";

    fn ttl_millis(text: &str) -> Result<u64, String> {
        millis("ttl", text)
    }

    fn path_string(path: &Path) -> String {
        path.to_token_stream().to_string()
    }

    #[test]
    fn key_and_ttl() {
        let args = parse(quote!(key = "daily-email", ttl = "10m"))
            .ok()
            .unwrap();
        assert_eq!(args.key.text(), "daily-email");
        assert_eq!(args.ttl.millis(), Some(600_000));
        assert_eq!(path_string(&args.krate), ":: cluster_singleton");
    }

    #[test]
    fn any_order_and_trailing_comma() {
        let args = parse(quote!(ttl = "30s", key = "k",)).ok().unwrap();
        assert_eq!(args.key.text(), "k");
        assert_eq!(args.ttl.millis(), Some(30_000));
    }

    #[test]
    fn key_placeholders_name_parameters() {
        let params = Parameters::of(&syn::parse_quote!(async fn f(day: u32)));
        let args = Args::parse(quote!(key = "report-{day}", ttl = "1h"), &params)
            .ok()
            .unwrap();
        assert_eq!(args.key.text(), "report-{day}");
        assert_eq!(
            args.key.expr().to_string(),
            "& :: std :: format ! (\"report-{}\" , day)"
        );
        assert_eq!(
            errors(quote!(key = "report-{day}", ttl = "1h")),
            ["cannot find parameter `day` named in `key`; \
              this function has no parameter that a placeholder can name"]
        );
        assert_eq!(
            errors_with(quote!(key = "report-{day:>2}", ttl = "1h"), &params),
            [
                "`key` placeholder `{day:>2}` must be a parameter's name alone, like \
              `{customer_id}`; write `{{` and `}}` for literal braces"
            ]
        );
        // The key is still checked with the rest.
        assert_eq!(
            errors_with(quote!(key = "{day}", ttl = "0s"), &params),
            [TTL_ZERO]
        );
    }

    #[test]
    fn raw_string_key() {
        let args = parse(quote!(key = r"a\b", ttl = "1s")).ok().unwrap();
        assert_eq!(args.key.text(), "a\\b");
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
        assert_eq!(ttl_millis("10x").unwrap_err(), ttl_not_a_duration());
        assert_eq!(ttl_millis("").unwrap_err(), ttl_not_a_duration());
        assert_eq!(ttl_millis("   ").unwrap_err(), ttl_not_a_duration());
        assert_eq!(ttl_millis("10").unwrap_err(), ttl_not_a_duration());
        assert_eq!(ttl_millis("-1s").unwrap_err(), ttl_not_a_duration());
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
        assert_eq!(
            errors(quote!(key = "k", ttl = 600)),
            [not_a_duration_or_path("ttl")]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "10x")),
            [ttl_not_a_duration()]
        );
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
            [KEY_EMPTY, &ttl_not_a_duration(), CRATE_NOT_A_PATH]
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
        assert_eq!(
            errors(quote!(key = "k", ttl = 600)),
            [not_a_duration_or_path("ttl")]
        );
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
                lease(1),
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
    fn options_default_to_absent() {
        let args = parse(quote!(key = "k", ttl = "1s")).ok().unwrap();
        assert!(args.wait.is_none());
        assert_eq!(args.renew, None);
        assert!(args.max_hold.is_none());
        assert_eq!(args.on_lost, None);
        assert!(args.min_hold.is_none());
        assert!(args.slot.is_none());
        assert_eq!(args.fencing, None);
    }

    #[test]
    fn every_option() {
        let args = parse(quote!(
            key = "k",
            ttl = "10m",
            wait = "30s",
            renew = true,
            max_hold = "1h",
            on_lost = "continue",
            min_hold = "1m",
            slot = "1d",
            fencing = true,
        ))
        .ok()
        .unwrap();
        assert_eq!(args.slot.and_then(|slot| slot.millis()), Some(86_400_000));
        assert_eq!(args.fencing, Some(true));
        assert_eq!(args.wait.and_then(|wait| wait.millis()), Some(30_000));
        assert_eq!(args.renew, Some(true));
        assert_eq!(args.max_hold.and_then(|max| max.millis()), Some(3_600_000));
        assert_eq!(args.on_lost, Some(OnLost::Continue));
        assert_eq!(args.min_hold.and_then(|min| min.millis()), Some(60_000));

        let args = parse(quote!(
            key = "k",
            ttl = "10m",
            renew = false,
            on_lost = "cancel"
        ))
        .ok()
        .unwrap();
        assert_eq!(args.renew, Some(false));
        assert_eq!(args.on_lost, Some(OnLost::Cancel));
    }

    #[test]
    fn durations_follow_the_ttl_rules() {
        for name in ["wait", "max_hold", "min_hold", "slot"] {
            let arg = syn::Ident::new(name, Span::call_site());
            let with = |value: &str| errors(quote!(key = "k", ttl = "1000000000h", #arg = #value));
            assert_eq!(with("10x"), [not_a_duration(name)]);
            assert_eq!(with("0s"), [format!("`{name}` must be greater than zero")]);
            assert_eq!(
                with("1500us"),
                [format!(
                    "`{name}` must be a whole number of milliseconds, the precision of Redis \
                     `PX`, not 1.5ms"
                )]
            );
            assert_eq!(
                with("9223372036854775.808s"),
                [format!(
                    "`{name}` is out of range; it must be between 1ms and 9223372036854775807ms"
                )]
            );
            assert_eq!(
                errors(quote!(key = "k", ttl = "1s", #arg = 30)),
                [not_a_duration_or_path(name)]
            );
            assert_eq!(
                errors(quote!(key = "k", ttl = "1s", #arg)),
                [format!(
                    "`{name}` needs a value; write `{name} = \"{}\"`",
                    match name {
                        "wait" => "30s",
                        "max_hold" => "1h",
                        "slot" => "1d",
                        _ => "1m",
                    }
                )]
            );
        }
    }

    #[test]
    fn durations_take_const_paths() {
        let args = parse(quote!(
            key = "k",
            ttl = LOCK_TTL,
            wait = crate::settings::WAIT,
            max_hold = Self::MAX_HOLD,
            min_hold = ::fleet::MIN_HOLD,
            slot = "1d",
        ))
        .ok()
        .unwrap();
        assert!(args.ttl.is_const());
        assert_eq!(args.ttl.shown, "LOCK_TTL");
        assert_eq!(args.ttl.millis(), None);
        let shown = |time: Option<Time>| time.map(|time| time.shown);
        assert_eq!(shown(args.wait).as_deref(), Some("crate::settings::WAIT"));
        assert_eq!(shown(args.max_hold).as_deref(), Some("Self::MAX_HOLD"));
        assert_eq!(shown(args.min_hold).as_deref(), Some("::fleet::MIN_HOLD"));
        assert_eq!(args.slot.and_then(|slot| slot.millis()), Some(86_400_000));
    }

    #[test]
    fn const_paths_are_left_to_the_compiler_to_compare() {
        // Only the compiler knows their values: no error here, in either direction.
        for args in [
            quote!(key = "k", ttl = LOCK_TTL, min_hold = "1000000h"),
            quote!(key = "k", ttl = "1s", min_hold = MIN_HOLD),
            quote!(key = "k", ttl = LOCK_TTL, max_hold = "1ms"),
            quote!(key = "k", ttl = "1000000h", max_hold = MAX_HOLD),
        ] {
            assert!(errors(args.clone()).is_empty(), "{args}");
        }
        // What does not depend on values still does.
        assert_eq!(
            errors(quote!(
                key = "k",
                ttl = LOCK_TTL,
                max_hold = MAX_HOLD,
                renew = false
            )),
            [MAX_HOLD_WITHOUT_RENEWAL]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = A, ttl = B)),
            ["duplicate `ttl` argument"]
        );
    }

    #[test]
    fn other_expressions_are_neither() {
        for bad in [
            quote!(600),
            quote!(10 * 60),
            quote!(Duration::from_secs(600)),
            quote!(&LOCK_TTL),
            quote!(
                #[cfg(x)]
                LOCK_TTL
            ),
        ] {
            assert_eq!(
                errors(quote!(key = "k", ttl = #bad)),
                [not_a_duration_or_path("ttl")],
                "{bad}"
            );
        }
        assert_eq!(
            not_a_duration_or_path("ttl"),
            "`ttl` must be a duration string like \"30s\", \"10m\" or \"1h\", or the path of a \
             `const` `Duration` like `LOCK_TTL`"
        );
    }

    #[test]
    fn renew_is_a_bool_literal() {
        assert_eq!(
            errors(quote!(key = "k", ttl = "1s", renew = "false")),
            ["`renew` takes a bool, not a string; write `renew = false`"]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "1s", fencing = "true")),
            ["`fencing` takes a bool, not a string; write `fencing = true`"]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "1s", fencing = 1)),
            ["`fencing` must be `true` or `false`"]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "1s", renew = "true")),
            ["`renew` takes a bool, not a string; write `renew = true`"]
        );
        for bad in [quote!("no"), quote!(0), quote!(off), quote!(!true)] {
            assert_eq!(
                errors(quote!(key = "k", ttl = "1s", renew = #bad)),
                ["`renew` must be `true` or `false`"]
            );
        }
        assert_eq!(
            errors(quote!(key = "k", ttl = "1s", renew)),
            ["`renew` needs a value; write `renew = false`"]
        );
    }

    #[test]
    fn on_lost_is_cancel_or_continue() {
        for bad in [
            quote!("stop"),
            quote!("Cancel"),
            quote!(""),
            quote!(cancel),
            quote!(1),
        ] {
            assert_eq!(
                errors(quote!(key = "k", ttl = "1s", on_lost = #bad)),
                [ON_LOST_NOT_A_MODE]
            );
        }
    }

    #[test]
    fn max_hold_against_ttl_and_renew() {
        assert!(errors(quote!(key = "k", ttl = "10m", max_hold = "10m")).is_empty());
        assert!(errors(quote!(
            key = "k",
            ttl = "10m",
            max_hold = "1h",
            renew = true
        ))
        .is_empty());
        assert_eq!(
            errors(quote!(key = "k", ttl = "10m", max_hold = "5m")),
            ["`max_hold` must be at least the `ttl` (10m)"]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "600s", max_hold = "599999ms")),
            ["`max_hold` must be at least the `ttl` (600s)"]
        );
        // Whatever its length, and in either order.
        assert_eq!(
            errors(quote!(
                key = "k",
                ttl = "10m",
                max_hold = "1h",
                renew = false
            )),
            [MAX_HOLD_WITHOUT_RENEWAL]
        );
        assert_eq!(
            errors(quote!(
                renew = false,
                max_hold = "1m",
                key = "k",
                ttl = "10m"
            )),
            [MAX_HOLD_WITHOUT_RENEWAL]
        );
        // Not compared with a `ttl` that is itself wrong.
        assert_eq!(
            errors(quote!(key = "k", ttl = "10x", max_hold = "1m")),
            [ttl_not_a_duration()]
        );
    }

    #[test]
    fn min_hold_against_ttl() {
        assert!(errors(quote!(key = "k", ttl = "10m", min_hold = "10m")).is_empty());
        assert!(errors(quote!(
            key = "k",
            ttl = "10m",
            min_hold = "1m",
            renew = false
        ))
        .is_empty());
        assert_eq!(
            errors(quote!(min_hold = "10m 1ms", key = "k", ttl = "10m")),
            ["`min_hold` must not exceed the `ttl` (10m)"]
        );
        assert_eq!(
            errors(quote!(key = "k", ttl = "0s", min_hold = "1h")),
            [TTL_ZERO]
        );
    }

    #[test]
    fn options_are_not_given_twice() {
        for (first, second, name) in [
            (quote!(wait = "1s"), quote!(wait = "2s"), "wait"),
            (quote!(renew = true), quote!(renew = false), "renew"),
            (quote!(max_hold = "1h"), quote!(max_hold = "2h"), "max_hold"),
            (
                quote!(on_lost = "cancel"),
                quote!(on_lost = "cancel"),
                "on_lost",
            ),
            (quote!(min_hold = "1s"), quote!(min_hold = "1s"), "min_hold"),
        ] {
            assert_eq!(
                errors(quote!(key = "k", ttl = "1h", #first, #second)),
                [format!("duplicate `{name}` argument")]
            );
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
