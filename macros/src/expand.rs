//! The code that `#[singleton]` generates.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{braced, token, Attribute, Ident, Path, ReturnType, Signature, Token, Type, Visibility};

use crate::args::{Args, Invalid};

const NOT_ASYNC: &str = "`#[singleton]` requires an `async fn`";
const CONST_FN: &str = "`#[singleton]` cannot be used on a `const fn`";
const NO_BODY: &str = "`#[singleton]` requires an `async fn` with a body; put it on the method \
                       in the `impl`";

/// Expands `#[singleton(args)] item`.
pub(crate) fn singleton(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: Function = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let message = match syn::parse2::<syn::TraitItemFn>(item.clone()) {
                Ok(_) => NO_BODY,
                Err(_) => NOT_ASYNC,
            };
            return with_error(item, syn::Error::new(Span::call_site(), message));
        }
    };
    let args = Args::parse(args);

    // A plain or `const fn` is left as written: there is no `Outcome` to promise its callers.
    if let Some(mut error) = check_signature(&func.sig) {
        if let Err(invalid) = args {
            error.combine(invalid.error);
        }
        return with_error(item, error);
    }

    match args {
        Ok(args) => {
            let lock = Lock {
                key: args.key.expr(),
                ttl_millis: args.ttl.millis,
            };
            rewrite(&mut func, &args.krate, Some(lock));
            func.into_token_stream()
        }
        // Expand anyway: with the rewritten signature, a caller that matches on `Outcome` or
        // uses `?` compiles, so the bad argument is the only error the user sees.
        Err(Invalid { krate, error }) => {
            rewrite(&mut func, &krate, None);
            with_error(func.into_token_stream(), error)
        }
    }
}

/// A function item whose body is kept as tokens. The body is never looked into, so any syntax
/// that rustc accepts goes through, and a long body costs nothing to parse (as in tokio's
/// `#[tokio::main]`).
struct Function {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    brace: token::Brace,
    /// `#![..]` at the top of the body; they stay there, outside the `async move` block.
    inner_attrs: Vec<Attribute>,
    body: TokenStream,
}

impl Parse for Function {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let content;
        let brace = braced!(content in input);
        let inner_attrs = content.call(Attribute::parse_inner)?;
        let body = content.parse()?;
        Ok(Function {
            attrs,
            vis,
            sig,
            brace,
            inner_attrs,
            body,
        })
    }
}

impl ToTokens for Function {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(self.attrs.iter().map(ToTokens::to_token_stream));
        self.vis.to_tokens(tokens);
        self.sig.to_tokens(tokens);
        self.brace.surround(tokens, |tokens| {
            tokens.extend(self.inner_attrs.iter().map(ToTokens::to_token_stream));
            self.body.to_tokens(tokens);
        });
    }
}

fn with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

fn check_signature(sig: &Signature) -> Option<syn::Error> {
    if let Some(constness) = sig.constness {
        return Some(syn::Error::new(constness.span, CONST_FN));
    }
    if sig.asyncness.is_none() {
        return Some(syn::Error::new(sig.fn_token.span, NOT_ASYNC));
    }
    None
}

/// The lock a well-formed attribute asks for.
struct Lock {
    /// A `&str` expression.
    key: TokenStream,
    ttl_millis: u64,
}

// Input:
//     #[singleton(key = "daily-email", ttl = "10m")]
//     pub async fn send(mailer: &Mailer) -> Result<usize, MailError> {
//         body
//     }
//
// Output:
//     pub async fn send(mailer: &Mailer)
//         -> ::core::result::Result<
//             ::cluster_singleton::Outcome<Result<usize, MailError>>,
//             ::cluster_singleton::Error,
//         >
//     {
//         ::cluster_singleton::__private::run(
//             "daily-email",
//             ::core::time::Duration::from_millis(600000u64),
//             async move {
//                 #[allow(unreachable_code, ..)]
//                 if false {
//                     let __singleton_fake_return: Result<usize, MailError> = loop {};
//                     return { __singleton_fake_return };
//                 }
//                 body
//             },
//         )
//         .await
//     }
//
// Without a lock (the arguments were bad and an error goes with it), the call becomes
// `::core::result::Result::Ok(::cluster_singleton::Outcome::Ran(async move { .. }.await))`, so
// the body is still checked and the signature is the same.
fn rewrite(func: &mut Function, krate: &Path, lock: Option<Lock>) {
    let (declared, return_span) = match &func.sig.output {
        ReturnType::Default => (quote!(()), func.sig.ident.span()),
        ReturnType::Type(_, ty) => (ty.to_token_stream(), ty.span()),
    };
    let fake_return_type = match &func.sig.output {
        ReturnType::Default => quote_spanned!(return_span=> ()),
        ReturnType::Type(_, ty) => erase_impl_trait(ty).into_token_stream(),
    };

    let arrow = match &func.sig.output {
        ReturnType::Type(arrow, _) => *arrow,
        ReturnType::Default => <Token![->]>::default(),
    };
    func.sig.output = ReturnType::Type(
        arrow,
        Box::new(Type::Verbatim(quote! {
            ::core::result::Result<#krate::Outcome<#declared>, #krate::Error>
        })),
    );

    // Placed first in the body so it pins the block's output type to the declared one: `?` then
    // knows its error type, and a mismatch is reported in the user's body with "return type
    // inferred to be .. here" on the declared type (the trick of tracing's `#[instrument]`).
    // The name is hygienic, so the body can neither see it nor shadow it; the braces around it
    // in `return` carry the user's span alone, which keeps rustc from adding "in this attribute
    // macro expansion" to that note.
    let fake_return = Ident::new(
        "__singleton_fake_return",
        Span::mixed_site().located_at(return_span),
    );
    let fake_return_edge = quote_spanned! {return_span=>
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let #fake_return: #fake_return_type = loop {};
            return { #fake_return };
        }
    };

    // `async move`, so `return` and `?` in the body leave the body only, and the runtime still
    // gets to release the lock.
    let user_body = std::mem::take(&mut func.body);
    let body = quote_spanned! {func.brace.span.join()=>
        async move {
            #fake_return_edge
            #user_body
        }
    };

    let call = match lock {
        Some(Lock { key, ttl_millis }) => {
            let ttl_millis = Literal::u64_suffixed(ttl_millis);
            quote! {
                #krate::__private::run(
                    #key,
                    ::core::time::Duration::from_millis(#ttl_millis),
                    #body,
                )
                .await
            }
        }
        None => quote! {
            ::core::result::Result::Ok(#krate::Outcome::Ran(#body.await))
        },
    };
    func.body = call;
}

/// `let x: impl Trait` is not allowed, so `impl Trait` in the fake return's type becomes `_`
/// (tracing's `ImplTraitEraser`; see tokio-rs/tracing#1615).
fn erase_impl_trait(ty: &Type) -> Type {
    struct ImplTraitEraser;

    impl VisitMut for ImplTraitEraser {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if let Type::ImplTrait(impl_trait) = ty {
                *ty = Type::Infer(syn::TypeInfer {
                    underscore_token: Token![_](impl_trait.span()),
                });
            } else {
                syn::visit_mut::visit_type_mut(self, ty);
            }
        }
    }

    let mut ty = ty.clone();
    ImplTraitEraser.visit_type_mut(&mut ty);
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, item: TokenStream) -> String {
        singleton(args, item).to_string()
    }

    const ALLOW: &str = "# [allow (unknown_lints , unreachable_code , \
        clippy :: diverging_sub_expression , clippy :: empty_loop , clippy :: let_unit_value , \
        clippy :: let_with_type_underscore , clippy :: needless_return , clippy :: unreachable)]";

    fn fake_return(ty: &str) -> String {
        format!(
            "{ALLOW} if false {{ let __singleton_fake_return : {ty} = loop {{ }} ; \
             return {{ __singleton_fake_return }} ; }}"
        )
    }

    #[test]
    fn free_fn() {
        let output = expand(
            quote!(key = "daily-email", ttl = "10m"),
            quote! {
                /// Sends it.
                #[inline]
                pub async fn send(mailer: &Mailer) -> Result<usize, MailError> {
                    let n = mailer.send().await?;
                    Ok(n)
                }
            },
        );
        let expected = format!(
            "# [doc = r\" Sends it.\"] # [inline] \
             pub async fn send (mailer : & Mailer) -> :: core :: result :: Result < \
             :: cluster_singleton :: Outcome < Result < usize , MailError > > , \
             :: cluster_singleton :: Error > {{ \
             :: cluster_singleton :: __private :: run (\"daily-email\" , \
             :: core :: time :: Duration :: from_millis (600000u64) , \
             async move {{ {} let n = mailer . send () . await ? ; Ok (n) }} ,) . await }}",
            fake_return("Result < usize , MailError >"),
        );
        assert_eq!(output, expected);
    }

    #[test]
    fn unit_return_and_crate_override() {
        let output = expand(
            quote!(key = "k", ttl = "1s", crate = "renamed"),
            quote!(
                async fn tick(&self) {}
            ),
        );
        let expected = format!(
            "async fn tick (& self) -> :: core :: result :: Result < \
             renamed :: Outcome < () > , renamed :: Error > {{ \
             renamed :: __private :: run (\"k\" , \
             :: core :: time :: Duration :: from_millis (1000u64) , \
             async move {{ {} }} ,) . await }}",
            fake_return("()"),
        );
        assert_eq!(output, expected);
    }

    #[test]
    fn impl_trait_is_erased_in_the_fake_return_only() {
        let output = expand(
            quote!(key = "k", ttl = "1s"),
            quote!(
                async fn f() -> Result<impl Display, Vec<impl Debug>> {
                    todo!()
                }
            ),
        );
        assert!(output.contains(
            "-> :: core :: result :: Result < :: cluster_singleton :: Outcome < \
             Result < impl Display , Vec < impl Debug > > >"
        ));
        assert!(output.contains(&fake_return("Result < _ , Vec < _ > >")));
    }

    #[test]
    fn generics_where_clauses_and_inner_attributes_are_kept() {
        let output = expand(
            quote!(key = "k", ttl = "1s"),
            quote! {
                pub(crate) async fn f<'a, T>(value: &'a T) -> usize where T: Display {
                    #![allow(unused)]
                    value.to_string().len()
                }
            },
        );
        assert!(output.starts_with(
            "pub (crate) async fn f < 'a , T > (value : & 'a T) -> :: core :: result :: Result < \
             :: cluster_singleton :: Outcome < usize > , :: cluster_singleton :: Error > \
             where T : Display { # ! [allow (unused)] :: cluster_singleton :: __private :: run"
        ));
    }

    #[test]
    fn body_is_passed_through_unparsed() {
        let output = expand(
            quote!(key = "k", ttl = "1s"),
            quote!(async fn f() { #![doc = "inner"] => any tokens <= rustc accepts }),
        );
        assert!(output.contains("{ # ! [doc = \"inner\"] :: cluster_singleton :: __private :: run"));
        assert!(output.contains("=> any tokens <= rustc accepts } ,) . await }"));
    }

    #[test]
    fn bad_arguments_expand_anyway() {
        let output = expand(
            quote!(key = "k", ttl = "10x"),
            quote!(
                pub async fn f() -> u8 {
                    1
                }
            ),
        );
        let expected = format!(
            "pub async fn f () -> :: core :: result :: Result < \
             :: cluster_singleton :: Outcome < u8 > , :: cluster_singleton :: Error > {{ \
             :: core :: result :: Result :: Ok (:: cluster_singleton :: Outcome :: Ran (\
             async move {{ {} 1 }} . await)) }} \
             :: core :: compile_error ! {{ \"{}\" }}",
            fake_return("u8"),
            "`ttl` must be a duration string like \\\"30s\\\", \\\"10m\\\" or \\\"1h\\\"",
        );
        assert_eq!(output, expected);
    }

    #[test]
    fn not_async_is_left_as_written() {
        let item = quote!(
            pub fn f() -> u8 {
                1
            }
        );
        let output = expand(quote!(key = "k", ttl = "1s"), item.clone());
        assert_eq!(
            output,
            format!(
                "{item} :: core :: compile_error ! {{ \"{}\" }}",
                NOT_ASYNC.replace('"', "\\\"")
            )
        );
    }

    #[test]
    fn signature_and_argument_errors_are_combined() {
        let output = expand(
            quote!(key = ""),
            quote!(
                const fn f() -> u8 {
                    1
                }
            ),
        );
        assert_eq!(output.matches("compile_error").count(), 3);
        assert!(output.contains("cannot be used on a `const fn`"));
        assert!(output.contains("`key` must not be empty"));
        assert!(output.contains("missing `ttl` argument"));
    }

    #[test]
    fn not_a_function() {
        let item = quote!(
            struct S;
        );
        let output = expand(quote!(key = "k", ttl = "1s"), item);
        assert!(output.starts_with("struct S ; :: core :: compile_error !"));
        assert!(output.contains("requires an `async fn`"));

        let item = quote!(
            async fn f(&self) -> u8;
        );
        let output = expand(quote!(key = "k", ttl = "1s"), item);
        assert!(output.contains("requires an `async fn` with a body"));
    }
}
