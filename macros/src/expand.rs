//! The code that `#[singleton]` generates.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{braced, token, Attribute, Ident, Path, ReturnType, Signature, Token, Type, Visibility};

use crate::args::{
    const_rule_messages, max_hold_below_ttl, min_hold_above_ttl, Args, Invalid, OnLost, Time,
    TimeValue, MAX_TTL_MILLIS, NANOS_PER_MILLI,
};
use crate::key::Parameters;

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
    let args = Args::parse(args, &Parameters::of(&func.sig));

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
                options: options(&args),
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
    /// A `__private::Options` expression.
    options: TokenStream,
}

// Input:
//     #[singleton(key = "k", ttl = "10m", wait = "30s", on_lost = "continue")]
//
// Output:
//     ::cluster_singleton::__private::Options::new(::core::time::Duration::from_millis(600000u64))
//         .wait(::core::time::Duration::from_millis(30000u64))
//         .on_lost(::cluster_singleton::__private::OnLost::Continue)
//
// Only the options that were given, always in the order `wait`, `renew`, `max_hold`, `on_lost`,
// `min_hold`, `slot`, `fencing`; the others keep the runtime's defaults, which are documented in one place there.
// Last, for a key with placeholders, `key_template`: the key as written, for the metrics' label.
//
// A duration given as a path is known only to the compiler, so then the options are built in a
// `const` that checks it (see `checked_consts`).
fn options(args: &Args) -> TokenStream {
    let durations = [
        ("ttl", Some(&args.ttl)),
        ("wait", args.wait.as_ref()),
        ("max_hold", args.max_hold.as_ref()),
        ("min_hold", args.min_hold.as_ref()),
        ("slot", args.slot.as_ref()),
    ];
    if durations
        .iter()
        .any(|(_, time)| time.is_some_and(Time::is_const))
    {
        return checked_consts(args, &durations);
    }
    build_options(args, |_, time| {
        let millis = Literal::u64_suffixed(time.millis().unwrap_or_default());
        quote!(::core::time::Duration::from_millis(#millis))
    })
}

/// The `Options` expression, with each duration argument's value given by `duration`, called
/// with the argument's name.
fn build_options(args: &Args, duration: impl Fn(&str, &Time) -> TokenStream) -> TokenStream {
    let krate = &args.krate;
    let ttl = duration("ttl", &args.ttl);
    let mut options = quote!(#krate::__private::Options::new(#ttl));
    if let Some(wait) = &args.wait {
        let wait = duration("wait", wait);
        options.extend(quote!(.wait(#wait)));
    }
    if let Some(renew) = args.renew {
        options.extend(quote!(.renew(#renew)));
    }
    if let Some(max_hold) = &args.max_hold {
        let max_hold = duration("max_hold", max_hold);
        options.extend(quote!(.max_hold(#max_hold)));
    }
    if let Some(on_lost) = args.on_lost {
        let on_lost = match on_lost {
            OnLost::Cancel => quote!(Cancel),
            OnLost::Continue => quote!(Continue),
        };
        options.extend(quote!(.on_lost(#krate::__private::OnLost::#on_lost)));
    }
    if let Some(min_hold) = &args.min_hold {
        let min_hold = duration("min_hold", min_hold);
        options.extend(quote!(.min_hold(#min_hold)));
    }
    if let Some(slot) = &args.slot {
        let slot = duration("slot", slot);
        options.extend(quote!(.slot(#slot)));
    }
    if let Some(fencing) = args.fencing {
        options.extend(quote!(.fencing(#fencing)));
    }
    if let Some(template) = args.key.template() {
        options.extend(quote!(.key_template(#template)));
    }
    options
}

// Input:
//     #[singleton(key = "k", ttl = LOCK_TTL, min_hold = "1m")]
//
// Output:
//     {
//     const __SINGLETON_OPTIONS: ::cluster_singleton::__private::Options = {
//         let __singleton_ttl: ::core::time::Duration = LOCK_TTL;
//         let __singleton_min_hold: ::core::time::Duration =
//             ::core::time::Duration::from_millis(60000u64);
//         if __singleton_ttl.is_zero() {
//             ::core::panic!("{}", "`ttl` must be greater than zero, and `LOCK_TTL` is zero; ..")
//         }
//         if __singleton_ttl.subsec_nanos() % 1000000u32 != 0 { ::core::panic!(..) }
//         if __singleton_ttl.as_millis() > 9223372036854775807u128 { ::core::panic!(..) }
//         if __singleton_min_hold.as_nanos() > __singleton_ttl.as_nanos() {
//             ::core::panic!("{}", "`min_hold` must not exceed the `ttl` (LOCK_TTL)")
//         }
//         ::cluster_singleton::__private::Options::new(__singleton_ttl)
//             .min_hold(__singleton_min_hold)
//     };
//     __SINGLETON_OPTIONS
//     }
//
// or, when a path may need the generics around the function (`Self::TTL`, see
// `outside_generics`), the same body in an inline `const { .. }` block instead of the item.
//
// The `let` with its type makes a path of another type a type error on the path; each check on
// a path, and each comparison involving one, is the rule a literal is held to here, and its
// panic (a compile error, since it runs in a `const`) carries the span of the path, or of the
// argument to change. Every function a check calls is a `const fn` since Rust 1.53.
fn checked_consts(args: &Args, durations: &[(&str, Option<&Time>)]) -> TokenStream {
    let local = |name: &str| Ident::new(&format!("__singleton_{name}"), Span::mixed_site());
    let mut body = TokenStream::new();
    for (name, time) in durations {
        let Some(time) = time else {
            continue;
        };
        let local = local(name);
        body.extend(match &time.value {
            TimeValue::Const(path) => {
                // A type error is reported on the path; the type it was expected to have, on
                // the path too when it is one name (one caret), else on the attribute, since
                // a span cannot cover `settings::TTL` on stable Rust and a label on `TTL`
                // alone would read as if part of the path were the expected type.
                let expected_span = if path.qself.is_none() && path.path.segments.len() == 1 {
                    time.span
                } else {
                    Span::call_site()
                };
                let duration = quote_spanned!(expected_span=> ::core::time::Duration);
                quote!(let #local: #duration = #path;)
            }
            TimeValue::Millis(millis) => {
                let millis = Literal::u64_suffixed(*millis);
                quote!(let #local: ::core::time::Duration = ::core::time::Duration::from_millis(#millis);)
            }
        });
    }
    for (name, time) in durations {
        let Some(time) = time.filter(|time| time.is_const()) else {
            continue;
        };
        let local = local(name);
        let [zero, fraction, range] = const_rule_messages(name, &time.shown);
        let nanos_per_milli = Literal::u32_suffixed(NANOS_PER_MILLI);
        let max_millis = Literal::u128_suffixed(MAX_TTL_MILLIS);
        body.extend(quote_spanned! {time.span=>
            if #local.is_zero() {
                ::core::panic!("{}", #zero)
            }
            if #local.subsec_nanos() % #nanos_per_milli != 0 {
                ::core::panic!("{}", #fraction)
            }
            if #local.as_millis() > #max_millis {
                ::core::panic!("{}", #range)
            }
        });
    }
    let ttl = local("ttl");
    let either_const = |time: &Time| time.is_const() || args.ttl.is_const();
    if let Some(min_hold) = args.min_hold.as_ref().filter(|time| either_const(time)) {
        let min_hold_local = local("min_hold");
        let message = min_hold_above_ttl(&args.ttl);
        body.extend(quote_spanned! {min_hold.span=>
            if #min_hold_local.as_nanos() > #ttl.as_nanos() {
                ::core::panic!("{}", #message)
            }
        });
    }
    // `max_hold` with `renew = false` never gets here: it is an error in itself.
    if let Some(max_hold) = args.max_hold.as_ref().filter(|time| either_const(time)) {
        let max_hold_local = local("max_hold");
        let message = max_hold_below_ttl(&args.ttl);
        body.extend(quote_spanned! {max_hold.span=>
            if #max_hold_local.as_nanos() < #ttl.as_nanos() {
                ::core::panic!("{}", #message)
            }
        });
    }
    let options = build_options(args, |name, _| local(name).into_token_stream());
    if durations
        .iter()
        .filter_map(|(_, time)| *time)
        .all(outside_generics)
    {
        // A `const` item is evaluated by `cargo check` too, used or not; an inline `const`
        // block only when a program that calls the function is built.
        let krate = &args.krate;
        let name = Ident::new("__SINGLETON_OPTIONS", Span::mixed_site());
        quote! {
            {
                const #name: #krate::__private::Options = {
                    #body
                    #options
                };
                #name
            }
        }
    } else {
        quote! {
            const {
                #body
                #options
            }
        }
    }
}

/// Whether a duration can be read from a `const` item in the function's body, which cannot
/// name `Self` or the generic parameters around it: a literal, a single name (`LOCK_TTL`), or a
/// path that starts at a module (`crate::`, `self::`, `super::`, `::`, or a lower-case name:
/// `settings::LOCK_TTL`). A path that starts with `Self` or a capitalised name (`Job::TTL`, or
/// `T::TTL` for a type parameter of the `impl`, which the attribute cannot see) may need them.
fn outside_generics(time: &Time) -> bool {
    let TimeValue::Const(path) = &time.value else {
        return true;
    };
    if path.qself.is_some() {
        return false;
    }
    let path = &path.path;
    if path.leading_colon.is_some() || path.segments.len() == 1 {
        return true;
    }
    path.segments.first().is_some_and(|first| {
        let name = first.ident.to_string();
        name != "Self" && name.starts_with(|c: char| c.is_lowercase())
    })
}

// Input:
//     #[singleton(key = "invoice:{customer_id}", ttl = "10m", min_hold = "5m")]
//     pub async fn send(customer_id: u64, mailer: &Mailer) -> Result<usize, MailError> {
//         body
//     }
//
// Output:
//     pub async fn send(customer_id: u64, mailer: &Mailer)
//         -> ::core::result::Result<
//             ::cluster_singleton::Outcome<Result<usize, MailError>>,
//             ::cluster_singleton::Error,
//         >
//     {
//         ::cluster_singleton::__private::run_with(
//             &::std::format!("invoice:{}", customer_id),
//             ::cluster_singleton::__private::Options::new(
//                 ::core::time::Duration::from_millis(600000u64),
//             )
//             .min_hold(::core::time::Duration::from_millis(300000u64)),
//             async move {
//                 #[allow(unreachable_code, ..)]
//                 if false {
//                     let __singleton_fake_return: Result<usize, MailError> = loop {};
//                     return { __singleton_fake_return };
//                 }
//                 body
//             },
//             |__singleton_value: &Result<usize, MailError>| {
//                 use ::cluster_singleton::__private::{AnyVerdict as _, ResultVerdict as _};
//                 (&::cluster_singleton::__private::Verdict(__singleton_value)).succeeded()
//             },
//         )
//         .await
//     }
//
// The key comes first, so it is formatted before `async move` takes the parameters.
//
// Without a lock (the arguments were bad and an error goes with it), the call becomes
// `::core::result::Result::Ok(::cluster_singleton::Outcome::Ran(async move { .. }.await))`, so
// the body is still checked and the signature is the same.
fn rewrite(func: &mut Function, krate: &Path, lock: Option<Lock>) {
    // Before the return type is rewritten: it judges a value of the declared one.
    let verdict = verdict(krate, &func.sig.output);
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
        Some(Lock { key, options }) => {
            quote! {
                #krate::__private::run_with(
                    #key,
                    #options,
                    #body,
                    #verdict,
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

// Input:
//     async fn send(..) -> Result<usize, MailError>
//
// Output:
//     |__singleton_value: &Result<usize, MailError>| {
//         use ::cluster_singleton::__private::{AnyVerdict as _, ResultVerdict as _};
//         (&::cluster_singleton::__private::Verdict(__singleton_value)).succeeded()
//     }
//
// The runtime asks it whether the body succeeded, to keep the key for `min_hold` or write a
// `slot` period's or a cron tick's done marker only after a success: a `Result` when it is `Ok`,
// anything else always. Generated for every function, not only those with `min_hold` or `slot`:
// any call may run for a cron tick (the `cron` feature schedules plain `#[singleton]` functions),
// and the attribute cannot tell. Which of the two traits answers
// is settled by method resolution at the concrete type (see `__private::Verdict`), so the
// parameter's type must be spelt out; `impl Trait` cannot be, and gets `|_| true`.
fn verdict(krate: &Path, output: &ReturnType) -> TokenStream {
    let declared = match output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) if has_impl_trait(ty) => return quote!(|_| true),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    let value = Ident::new("__singleton_value", Span::mixed_site());
    quote! {
        |#value: &#declared| {
            use #krate::__private::{AnyVerdict as _, ResultVerdict as _};
            (&#krate::__private::Verdict(#value)).succeeded()
        }
    }
}

/// `let x: impl Trait` is not allowed, so `impl Trait` in the fake return's type becomes `_`
/// (tracing's `ImplTraitEraser`; see tokio-rs/tracing#1615).
fn erase_impl_trait(ty: &Type) -> Type {
    let mut ty = ty.clone();
    ImplTraitEraser::default().visit_type_mut(&mut ty);
    ty
}

fn has_impl_trait(ty: &Type) -> bool {
    let mut eraser = ImplTraitEraser::default();
    eraser.visit_type_mut(&mut ty.clone());
    eraser.erased
}

/// Turns every `impl Trait` in a type into `_`.
#[derive(Default)]
struct ImplTraitEraser {
    erased: bool,
}

impl VisitMut for ImplTraitEraser {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(impl_trait) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: Token![_](impl_trait.span()),
            });
            self.erased = true;
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
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

    fn verdict(krate: &str, ty: &str) -> String {
        format!(
            "| __singleton_value : & {ty} | {{ \
             use {krate} :: __private :: {{ AnyVerdict as _ , ResultVerdict as _ }} ; \
             (& {krate} :: __private :: Verdict (__singleton_value)) . succeeded () }}"
        )
    }

    /// The arguments of `run_with` after the key, up to the body.
    fn options_of(args: TokenStream) -> String {
        let output = expand(
            args,
            quote!(
                async fn f() {}
            ),
        );
        let start = output
            .find(":: cluster_singleton :: __private :: Options")
            .unwrap();
        let end = output.find(" , async move").unwrap();
        output[start..end].to_owned()
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
             :: cluster_singleton :: __private :: run_with (\"daily-email\" , \
             :: cluster_singleton :: __private :: Options :: new (\
             :: core :: time :: Duration :: from_millis (600000u64)) , \
             async move {{ {} let n = mailer . send () . await ? ; Ok (n) }} , {} ,) . await }}",
            fake_return("Result < usize , MailError >"),
            verdict(":: cluster_singleton", "Result < usize , MailError >"),
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
             renamed :: __private :: run_with (\"k\" , \
             renamed :: __private :: Options :: new (\
             :: core :: time :: Duration :: from_millis (1000u64)) , \
             async move {{ {} }} , {} ,) . await }}",
            fake_return("()"),
            verdict("renamed", "()"),
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
        // A closure cannot name `impl Trait` in its parameter's type.
        assert!(output.ends_with("} , | _ | true ,) . await }"));
    }

    #[test]
    fn options_only_as_given_and_in_order() {
        let duration =
            |millis: &str| format!(":: core :: time :: Duration :: from_millis ({millis})");
        let new = format!(
            ":: cluster_singleton :: __private :: Options :: new ({})",
            duration("600000u64")
        );
        assert_eq!(options_of(quote!(key = "k", ttl = "10m")), new);
        assert_eq!(
            options_of(quote!(
                min_hold = "1m",
                on_lost = "continue",
                max_hold = "1h",
                renew = true,
                wait = "30s",
                key = "k",
                ttl = "10m"
            )),
            format!(
                "{new} . wait ({}) . renew (true) . max_hold ({}) . on_lost (\
                 :: cluster_singleton :: __private :: OnLost :: Continue) . min_hold ({})",
                duration("30000u64"),
                duration("3600000u64"),
                duration("60000u64"),
            )
        );
        assert_eq!(
            options_of(quote!(
                key = "k",
                ttl = "10m",
                renew = false,
                on_lost = "cancel"
            )),
            format!(
                "{new} . renew (false) . on_lost (\
                 :: cluster_singleton :: __private :: OnLost :: Cancel)"
            )
        );
    }

    /// The whole options argument of `run_with`, for the key `"k"`.
    fn options_argument_of(args: TokenStream) -> String {
        let output = expand(
            args,
            quote!(
                async fn f() {}
            ),
        );
        let start = output.find("run_with (\"k\" , ").unwrap() + "run_with (\"k\" , ".len();
        let end = output.find(" , async move").unwrap();
        output[start..end].to_owned()
    }

    #[test]
    fn const_paths_are_typed_and_checked_in_a_const_item() {
        let output = options_argument_of(quote!(key = "k", ttl = LOCK_TTL, min_hold = "1m"));
        let ttl_rules = crate::args::const_rule_messages("ttl", "LOCK_TTL");
        let expected = format!(
            "{{ const __SINGLETON_OPTIONS : :: cluster_singleton :: __private :: Options = {{ \
             let __singleton_ttl : :: core :: time :: Duration = LOCK_TTL ; \
             let __singleton_min_hold : :: core :: time :: Duration = \
             :: core :: time :: Duration :: from_millis (60000u64) ; \
             if __singleton_ttl . is_zero () {{ :: core :: panic ! (\"{{}}\" , {:?}) }} \
             if __singleton_ttl . subsec_nanos () % 1000000u32 != 0 {{ \
             :: core :: panic ! (\"{{}}\" , {:?}) }} \
             if __singleton_ttl . as_millis () > 9223372036854775807u128 {{ \
             :: core :: panic ! (\"{{}}\" , {:?}) }} \
             if __singleton_min_hold . as_nanos () > __singleton_ttl . as_nanos () {{ \
             :: core :: panic ! (\"{{}}\" , \"`min_hold` must not exceed the `ttl` (LOCK_TTL)\") }} \
             :: cluster_singleton :: __private :: Options :: new (__singleton_ttl) \
             . min_hold (__singleton_min_hold) }} ; __SINGLETON_OPTIONS }}",
            ttl_rules[0], ttl_rules[1], ttl_rules[2],
        );
        assert_eq!(output, expected);
    }

    #[test]
    fn const_paths_that_may_need_generics_are_checked_in_an_inline_const_block() {
        for ttl in [
            quote!(Self::TTL),
            quote!(T::TTL),
            quote!(<T as Settings>::TTL),
        ] {
            let output = options_argument_of(quote!(key = "k", ttl = #ttl));
            assert!(
                output.starts_with("const { let __singleton_ttl"),
                "{output}"
            );
            assert!(!output.contains("__SINGLETON_OPTIONS"), "{output}");
        }
        for ttl in [
            quote!(LOCK_TTL),
            quote!(crate::settings::TTL),
            quote!(settings::TTL),
            quote!(::fleet::TTL),
        ] {
            let output = options_argument_of(quote!(key = "k", ttl = "1s", wait = #ttl));
            assert!(
                output.starts_with("{ const __SINGLETON_OPTIONS"),
                "{output}"
            );
        }
    }

    #[test]
    fn key_placeholders_are_formatted_before_the_body_moves_them() {
        let output = expand(
            quote!(key = "invoice:{customer_id}", ttl = "1s"),
            quote!(
                async fn f(customer_id: String) {}
            ),
        );
        assert!(output.contains(
            ":: cluster_singleton :: __private :: run_with (\
             & :: std :: format ! (\"invoice:{}\" , customer_id) , \
             :: cluster_singleton :: __private :: Options :: new"
        ));
        // The key as written goes last in the options, for metrics labelled by template.
        let output = expand(
            quote!(key = "invoice:{customer_id}:{{v2}}", ttl = "1s"),
            quote!(
                async fn f(customer_id: String) {}
            ),
        );
        assert!(output.contains(
            ":: core :: time :: Duration :: from_millis (1000u64)) \
             . key_template (\"invoice:{customer_id}:{{v2}}\") , async move"
        ));
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
             where T : Display { # ! [allow (unused)] :: cluster_singleton :: __private :: run_with"
        ));
    }

    #[test]
    fn body_is_passed_through_unparsed() {
        let output = expand(
            quote!(key = "k", ttl = "1s"),
            quote!(async fn f() { #![doc = "inner"] => any tokens <= rustc accepts }),
        );
        assert!(output
            .contains("{ # ! [doc = \"inner\"] :: cluster_singleton :: __private :: run_with"));
        assert!(output.contains("=> any tokens <= rustc accepts } , |"));
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
