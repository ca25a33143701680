//! `key = "..."`: the lock's name, with `{param}` placeholders filled from the function's
//! parameters.
//!
//! ```text
//! key = "daily-email"             the literal itself
//! key = "invoice:{customer_id}"   `customer_id` formatted with `Display`
//! key = "set-{{a}}"               `{{` and `}}` are literal braces: the key is `set-{a}`
//! ```
//!
//! A placeholder holds a parameter's name and nothing else (no format spec, no field, no
//! expression), and only parameters bound to a plain identifier can be named: `customer_id: u64`
//! and `mut n: u32` can, `(a, b): (u32, u32)` and `self` cannot.

use proc_macro2::{Literal, Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::{FnArg, Ident, LitStr, Pat, Signature};

pub(crate) const KEY_EMPTY: &str = "`key` must not be empty";

/// The parameters that a key may name.
#[derive(Default)]
pub(crate) struct Parameters {
    /// Those bound to a plain identifier, in order.
    names: Vec<Ident>,
}

impl Parameters {
    pub(crate) fn of(sig: &Signature) -> Parameters {
        let names = sig
            .inputs
            .iter()
            .filter_map(|input| match input {
                FnArg::Typed(typed) => match &*typed.pat {
                    Pat::Ident(pat) if pat.subpat.is_none() => Some(pat.ident.clone()),
                    _ => None,
                },
                FnArg::Receiver(_) => None,
            })
            .collect();
        Parameters { names }
    }

    /// The parameter called `name`, raw (`r#type`) or not.
    fn find(&self, name: &Ident) -> Option<&Ident> {
        self.names.iter().find(|ident| ident.unraw() == *name)
    }

    /// "`a`", "`a` or `b`", "`a`, `b`, or `c`", as rustc lists what it expected.
    fn expected(&self) -> String {
        let names: Vec<String> = self
            .names
            .iter()
            .map(|ident| format!("`{}`", ident.unraw()))
            .collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [first, second] => format!("{first} or {second}"),
            [rest @ .., last] => format!("{}, or {last}", rest.join(", ")),
        }
    }

    /// The end of an error about a placeholder: which parameters it could have named.
    fn usable(&self) -> String {
        if self.names.is_empty() {
            "this function has no parameter that a placeholder can name".to_owned()
        } else {
            format!("expected {}", self.expected())
        }
    }
}

/// A checked `key = "..."`.
pub(crate) struct Key {
    parts: Vec<Part>,
    /// The key as written, for the metrics' `key` label (see [`Key::template`]).
    written: String,
    /// The literal, where the generated code that builds the key is reported.
    span: Span,
}

enum Part {
    /// Text taken as it is, with `{{` and `}}` already turned into single braces.
    Text(String),
    /// A parameter to format with `Display`: the parameter's own identifier, so that it resolves
    /// to that binding even when the key and the function come from different macros.
    Param(Ident),
}

impl Key {
    /// Reads the placeholders of `lit` and checks them against `params`.
    pub(crate) fn parse(lit: &LitStr, params: &Parameters) -> syn::Result<Key> {
        let value = lit.value();
        if value.is_empty() {
            return Err(syn::Error::new(lit.span(), KEY_EMPTY));
        }
        let parts = template(&value)
            .and_then(|parts| resolve(parts, params))
            .map_err(|message| syn::Error::new(lit.span(), message))?;
        Ok(Key {
            parts,
            written: value,
            span: lit.span(),
        })
    }

    /// The `&str` expression that names the lock in the generated code: the key itself when it
    /// has no placeholder, else `&::std::format!(..)` over the parameters it names.
    ///
    /// The call that takes it evaluates it before the body's `async move` block moves the
    /// parameters, so a `String` parameter can be both in the key and in the body.
    //
    // Input:
    //     key = "invoice:{customer_id}:{{v2}}"     (on `fn f(customer_id: u64)`)
    //     key = "set-{{a}}"
    //
    // Output:
    //     &::std::format!("invoice:{}:{{v2}}", customer_id)
    //     "set-{a}"
    pub(crate) fn expr(&self) -> TokenStream {
        let mut plain = String::new();
        let mut format = String::new();
        let mut args = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => {
                    plain.push_str(text);
                    format.push_str(&text.replace('{', "{{").replace('}', "}}"));
                }
                Part::Param(ident) => {
                    format.push_str("{}");
                    let mut ident = ident.clone();
                    // Resolved as the parameter, reported on the key (a type without `Display`).
                    ident.set_span(ident.span().located_at(self.span));
                    args.push(ident);
                }
            }
        }
        if args.is_empty() {
            let mut literal = Literal::string(&plain);
            literal.set_span(self.span);
            return quote!(#literal);
        }
        let mut format = Literal::string(&format);
        format.set_span(self.span);
        quote!(&::std::format!(#format, #(#args),*))
    }

    /// The key as written, when it has placeholders: the template that the metrics can label a
    /// call with instead of the key (`Options::key_template`). `None` for a plain key, which is
    /// its own template.
    pub(crate) fn template(&self) -> Option<&str> {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Param(_)))
            .then_some(self.written.as_str())
    }

    /// The key with its placeholders written back as `{name}`.
    #[cfg(test)]
    pub(crate) fn text(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Param(ident) => format!("{{{ident}}}"),
            })
            .collect()
    }
}

/// A piece of a key before its placeholders are checked against the parameters.
enum Piece {
    Text(String),
    Placeholder(String),
}

/// Splits a key into text and `{placeholders}`, the way `format!` reads its string.
fn template(key: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut inside = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inside.push(c),
                        None => {
                            return Err("`key` has an unclosed `{`; close the placeholder with \
                                        `}`, or write `{{` for a literal brace"
                                .to_owned())
                        }
                    }
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Placeholder(inside));
            }
            '}' => {
                return Err("`key` has an unmatched `}`; write `}}` for a literal brace".to_owned())
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Checks every placeholder names a parameter that can be formatted.
fn resolve(pieces: Vec<Piece>, params: &Parameters) -> Result<Vec<Part>, String> {
    pieces
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(text) => Ok(Part::Text(text)),
            Piece::Placeholder(name) => parameter(&name, params).map(Part::Param),
        })
        .collect()
}

fn parameter(name: &str, params: &Parameters) -> Result<Ident, String> {
    let Some(ident) = identifier(name) else {
        return Err(format!(
            "`key` placeholder `{{{name}}}` must be a parameter's name alone, like \
             `{{customer_id}}`; write `{{{{` and `}}}}` for literal braces"
        ));
    };
    if ident == "self" {
        return Err(format!(
            "`self` cannot be used in a `key` placeholder; {}",
            params.usable()
        ));
    }
    params.find(&ident).cloned().ok_or_else(|| {
        format!(
            "cannot find parameter `{ident}` named in `key`; {}",
            params.usable()
        )
    })
}

/// The identifier that `text` is exactly, with nothing around it (keywords included, raw
/// identifiers unraw'd).
fn identifier(text: &str) -> Option<Ident> {
    if text.trim() != text {
        return None;
    }
    let ident = Ident::parse_any.parse_str(text).ok()?;
    Some(ident.unraw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn params(sig: Signature) -> Parameters {
        Parameters::of(&sig)
    }

    fn key(text: &str, params: &Parameters) -> syn::Result<Key> {
        Key::parse(&LitStr::new(text, Span::call_site()), params)
    }

    fn expr(text: &str, params: &Parameters) -> String {
        key(text, params).unwrap().expr().to_string()
    }

    fn error(text: &str, params: &Parameters) -> String {
        match key(text, params) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn usable_parameters() {
        let params = params(parse_quote! {
            async fn f(
                &self,
                customer_id: u64,
                mut n: u32,
                ref r: u8,
                (a, b): (u8, u8),
                whole @ _: u8,
                _: u8,
                r#type: &str,
            )
        });
        let names: Vec<String> = params.names.iter().map(Ident::to_string).collect();
        assert_eq!(names, ["customer_id", "n", "r", "r#type"]);
        assert_eq!(params.expected(), "`customer_id`, `n`, `r`, or `type`");
    }

    #[test]
    fn no_placeholder_is_the_literal() {
        let none = Parameters::default();
        assert_eq!(expr("daily-email", &none), "\"daily-email\"");
        assert_eq!(expr("set-{{a}}", &none), "\"set-{a}\"");
        assert_eq!(expr("}}{{", &none), "\"}{\"");
        assert_eq!(expr("a\"b\\c", &none), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn placeholders_become_format() {
        let params = params(parse_quote!(async fn f(customer_id: u64, mut n: u32, r#type: &str)));
        assert_eq!(
            expr("invoice:{customer_id}", &params),
            "& :: std :: format ! (\"invoice:{}\" , customer_id)"
        );
        assert_eq!(
            expr("{n}-{{literal}}-{customer_id}{n}", &params),
            "& :: std :: format ! (\"{}-{{literal}}-{}{}\" , n , customer_id , n)"
        );
        assert_eq!(
            expr("{type}/{r#type}", &params),
            "& :: std :: format ! (\"{}/{}\" , r#type , r#type)"
        );
        // A brace, a placeholder and a brace.
        assert_eq!(key("a{{{n}}}", &params).unwrap().text(), "a{{n}}");
    }

    #[test]
    fn unknown_parameter() {
        let params = params(parse_quote!(async fn f(&self, customer_id: u64, region: &str)));
        assert_eq!(
            error("invoice:{customer}", &params),
            "cannot find parameter `customer` named in `key`; expected `customer_id` or `region`"
        );
        assert_eq!(
            error("{self}", &params),
            "`self` cannot be used in a `key` placeholder; expected `customer_id` or `region`"
        );
        let none = Parameters::default();
        assert_eq!(
            error("job-{day}", &none),
            "cannot find parameter `day` named in `key`; \
             this function has no parameter that a placeholder can name"
        );
        let one = self::params(parse_quote!(async fn f((a, b): (u8, u8), day: u8)));
        assert_eq!(
            error("{a}", &one),
            "cannot find parameter `a` named in `key`; expected `day`"
        );
    }

    #[test]
    fn only_names_in_placeholders() {
        let params = params(parse_quote!(async fn f(n: u32)));
        for bad in [
            "{}", "{0}", "{n:>5}", "{n:?}", "{self.n}", "{n + 1}", "{ n }", "{n()}", "{'a}",
        ] {
            assert_eq!(
                error(bad, &params),
                format!(
                    "`key` placeholder `{bad}` must be a parameter's name alone, like \
                     `{{customer_id}}`; write `{{{{` and `}}}}` for literal braces"
                ),
            );
        }
    }

    #[test]
    fn unbalanced_braces() {
        let params = params(parse_quote!(async fn f(n: u32)));
        let unclosed = "`key` has an unclosed `{`; close the placeholder with `}`, or write `{{` \
                        for a literal brace";
        let unmatched = "`key` has an unmatched `}`; write `}}` for a literal brace";
        assert_eq!(error("a{", &params), unclosed);
        assert_eq!(error("a{n", &params), unclosed);
        assert_eq!(error("{{{", &params), unclosed);
        assert_eq!(error("a}", &params), unmatched);
        assert_eq!(error("}}}", &params), unmatched);
        assert_eq!(error("{n}}", &params), unmatched);
    }

    #[test]
    fn empty() {
        assert_eq!(error("", &Parameters::default()), KEY_EMPTY);
    }
}
