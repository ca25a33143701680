//! Shapes of `#[singleton]` functions that must build, through the facade as users see it, each
//! in a `mod` of its own and run against a `memory://` store. One crate for all of them, where
//! trybuild would build a crate per case. The mistakes that must not build are in `tests/ui/`
//! (see `tests/ui.rs`).

// What the generated code must not trip, in a user's crate that is strict about it.
#![deny(warnings, clippy::all)]
#![forbid(unsafe_code)]

// As after `renamed = { package = "cluster-singleton", .. }` in Cargo.toml: at the crate root, so
// that `renamed` is in the extern prelude and `crate = "::renamed"` resolves (`crate_renamed`).
extern crate cluster_singleton as renamed;

use std::time::Duration;

use cluster_singleton::runtime::{Config, Runtime};

/// A runtime on a `memory://` store of the test's own: stores are shared process-wide by URL. Its
/// `max_ttl` admits the hour-long ttls some cases declare.
fn memory(test: &str) -> Runtime {
    Config::new([format!("memory://attribute-compiles-{test}")])
        .max_ttl(Duration::from_secs(3600))
        .build()
        .expect("a memory:// runtime")
}

mod attributes_kept {
    use cluster_singleton::{singleton, Outcome};

    pub mod jobs {
        use super::singleton;

        /// Sends the daily digest.
        ///
        /// The doc comment, the `#[doc(alias)]`, the `#[inline]` and the `pub(crate)` stay.
        #[doc(alias = "digest")]
        #[inline]
        // Outer and inner attributes together are the point: both kinds must come through.
        #[allow(clippy::mixed_attributes_style)]
        #[singleton(key = "digest", ttl = "10m")]
        #[cfg_attr(test, allow(clippy::unused_async))]
        pub(crate) async fn send_digest(count: usize) -> usize {
            #![allow(clippy::identity_op)]
            count + 0
        }

        #[singleton(key = "one-expression", ttl = "10m")]
        pub(crate) async fn one_expression() -> u8 {
            7
        }

        #[cfg(any())]
        #[singleton(key = "compiled-out", ttl = "10m")]
        pub(crate) async fn compiled_out() -> u8 {
            this_does_not_exist()
        }
    }

    async fn run() -> Result<(), cluster_singleton::Error> {
        if let Outcome::Ran(sent) = jobs::send_digest(3).await? {
            println!("{sent}");
        }
        let _seven = jobs::one_expression().await?;
        Ok(())
    }

    #[tokio::test]
    async fn attributes_kept() {
        let runtime = super::memory("attributes-kept");
        runtime.scope(run()).await.expect("runs");
    }
}

mod const_durations {
    // Every duration argument takes the path of a `const Duration`, alone or mixed with literals.

    use std::time::Duration;

    use cluster_singleton::singleton;

    const LOCK_TTL: Duration = Duration::from_secs(600);

    mod settings {
        use std::time::Duration;

        pub const TTL: Duration = Duration::from_secs(60);
        pub const WAIT: Duration = Duration::from_millis(1500);
        pub const MAX_HOLD: Duration = Duration::from_secs(3600);
        pub const MIN_HOLD: Duration = Duration::from_secs(60);
        pub const SLOT: Duration = Duration::from_secs(24 * 3600);
    }

    #[singleton(key = "const-ttl", ttl = LOCK_TTL)]
    async fn const_ttl() -> u8 {
        1
    }

    #[singleton(
        key = "every-duration",
        ttl = crate::const_durations::settings::TTL,
        wait = settings::WAIT,
        max_hold = settings::MAX_HOLD,
        min_hold = self::settings::MIN_HOLD,
        slot = settings::SLOT,
        renew = true,
        on_lost = "continue",
        fencing = true,
    )]
    async fn every_duration() -> Result<(), std::io::Error> {
        Ok(())
    }

    // A literal beside a path is still compared with it: 1m fits in LOCK_TTL, 1h is above it.
    #[singleton(key = "mixed", ttl = LOCK_TTL, min_hold = "1m", max_hold = "1h")]
    async fn mixed() {}

    #[singleton(key = "literal-ttl", ttl = "10m", min_hold = settings::MIN_HOLD)]
    async fn literal_ttl() {}

    struct Report;

    impl Report {
        const TTL: Duration = Duration::from_secs(30);

        #[singleton(key = "report", ttl = Self::TTL)]
        async fn run(&self) -> usize {
            3
        }
    }

    // A generic function: the checks run when it is instantiated.
    #[singleton(key = "generic-{name}", ttl = LOCK_TTL)]
    async fn generic<T: std::fmt::Display>(name: T) -> String {
        name.to_string()
    }

    // Through a `macro_rules!` `$ttl:expr`, which wraps the path in an invisible group.
    macro_rules! job {
        ($name:ident, $ttl:expr) => {
            #[singleton(key = "macro", ttl = $ttl)]
            async fn $name() {}
        };
    }
    job!(from_macro, LOCK_TTL);

    #[tokio::test]
    async fn const_durations() {
        let runtime = super::memory("const-durations");
        let ran = runtime
            .scope(async {
                Ok::<_, cluster_singleton::Error>([
                    const_ttl().await?.ran(),
                    every_duration().await?.ran(),
                    mixed().await?.ran(),
                    literal_ttl().await?.ran(),
                    Report.run().await?.ran(),
                    generic("a").await?.ran(),
                    from_macro().await?.ran(),
                ])
            })
            .await
            .expect("runs");
        assert_eq!(ran, [true; 7]);
    }
}

mod crate_renamed {
    // `renamed` is the facade under another name: see the `extern crate` at the top of the file.
    use renamed::{singleton, Outcome};

    /// A user's own re-export of the facade.
    mod facade {
        pub use renamed::*;
    }

    #[singleton(key = "renamed", ttl = "10m", crate = "renamed")]
    async fn through_the_alias() -> u8 {
        1
    }

    #[singleton(crate = "::renamed", key = "absolute", ttl = "10m")]
    async fn through_the_absolute_alias() -> u8 {
        2
    }

    #[singleton(
        key = "re-exported",
        ttl = "10m",
        crate = "crate::crate_renamed::facade"
    )]
    async fn through_a_re_export() -> u8 {
        3
    }

    mod nested {
        use renamed::singleton;

        #[singleton(key = "nested", ttl = "10m", crate = "super::facade")]
        pub async fn relative_to_the_module() -> u8 {
            4
        }
    }

    async fn all() -> Result<u8, renamed::Error> {
        let mut total = 0;
        for outcome in [
            through_the_alias().await?,
            through_the_absolute_alias().await?,
            through_a_re_export().await?,
            nested::relative_to_the_module().await?,
        ] {
            if let Outcome::Ran(n) = outcome {
                total += n;
            }
        }
        Ok(total)
    }

    #[tokio::test]
    async fn crate_renamed() {
        let runtime = super::memory("crate-renamed");
        assert_eq!(runtime.scope(all()).await.expect("runs"), 1 + 2 + 3 + 4);
    }
}

mod free_fn {
    use cluster_singleton::{singleton, Outcome};

    #[derive(Debug)]
    pub struct MailError;

    impl std::fmt::Display for MailError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the mail server refused")
        }
    }

    impl std::error::Error for MailError {}

    pub struct Mailer {
        recipients: Vec<String>,
    }

    impl Mailer {
        async fn send_all(&self) -> Result<usize, MailError> {
            Ok(self.recipients.len())
        }
    }

    #[singleton(key = "daily-email", ttl = "10m")]
    pub async fn send_daily_email(mailer: &Mailer) -> Result<usize, MailError> {
        mailer.send_all().await
    }

    async fn cron_tick(mailer: &Mailer) -> Result<(), Box<dyn std::error::Error>> {
        match send_daily_email(mailer).await? {
            Outcome::Ran(sent) => println!("sent {}", sent?),
            Outcome::Skipped(why) => println!("another machine has it: {why}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn free_fn() {
        let runtime = super::memory("free-fn");
        let mailer = Mailer {
            recipients: vec!["a@example.com".to_owned()],
        };
        runtime.scope(cron_tick(&mailer)).await.expect("runs");
    }
}

mod generic_where {
    use std::fmt::Display;

    use cluster_singleton::{singleton, Outcome};

    #[singleton(key = "report", ttl = "10m")]
    async fn report<'a, T, U, const N: usize>(
        title: &'a str,
        rows: [T; N],
        extra: &U,
        footer: &'a str,
    ) -> (String, &'a str)
    where
        T: Display + Send,
        U: Clone + Send + Sync,
    {
        let _copy = extra.clone();
        let mut out = title.to_owned();
        for row in rows {
            out.push_str(&row.to_string());
        }
        (out, footer)
    }

    struct Store<K> {
        keys: Vec<K>,
    }

    impl<K> Store<K>
    where
        K: Ord + Clone + Send + Sync,
    {
        #[singleton(key = "store-compact", ttl = "1m")]
        async fn compact<F>(&mut self, keep: F) -> usize
        where
            F: Fn(&K) -> bool + Send,
        {
            self.keys.retain(|key| keep(key));
            self.keys.sort();
            self.keys.len()
        }
    }

    async fn nightly() -> Result<(), cluster_singleton::Error> {
        if let Outcome::Ran((text, footer)) = report("rows: ", [1, 2, 3], &"x", "end").await? {
            println!("{text} {footer}");
        }
        let mut store = Store {
            keys: vec![3, 1, 2],
        };
        let _kept = store.compact(|key| *key > 1).await?;
        Ok(())
    }

    #[tokio::test]
    async fn generic_where() {
        let runtime = super::memory("generic-where");
        runtime.scope(nightly()).await.expect("runs");
    }
}

mod hygiene {
    #![allow(non_camel_case_types)]

    // Names a user may well have in scope must not change what the generated code refers to.

    use cluster_singleton::singleton;

    #[derive(Debug)]
    pub struct AppError;

    type Result<T> = std::result::Result<T, AppError>;

    #[allow(dead_code)]
    struct Duration;
    #[allow(dead_code)]
    struct Outcome;
    #[allow(dead_code)]
    struct Error;
    #[allow(dead_code)]
    struct core;
    #[allow(dead_code)]
    struct __private;
    #[allow(dead_code)]
    struct Options;
    #[allow(dead_code)]
    enum OnLost {
        Cancel,
        Continue,
    }
    #[allow(dead_code)]
    struct Verdict;
    #[allow(dead_code)]
    trait ResultVerdict {}
    #[allow(dead_code)]
    trait AnyVerdict {}

    mod std_like {
        #[allow(dead_code)]
        pub struct Result;
    }

    #[singleton(key = "aliased-result", ttl = "10s")]
    async fn aliased_result(fail: bool) -> Result<u8> {
        if fail {
            return Err(AppError);
        }
        Ok(1)
    }

    // Parameters and locals named like the generated ones are neither captured nor shadowed.
    #[singleton(key = "shadowing", ttl = "10s")]
    async fn shadowing(__singleton_fake_return: u8, key: u8, ttl: u8, run: u8) -> u8 {
        let body = __singleton_fake_return + key;
        body + ttl + run
    }

    // The same with every option, a key placeholder and the closure that judges the output.
    #[singleton(
        key = "shadowing-{__singleton_value}",
        ttl = "10s",
        wait = "1s",
        renew = true,
        max_hold = "1m",
        on_lost = "continue",
        min_hold = "5s"
    )]
    async fn shadowing_options(__singleton_value: u8, options: u8, succeeded: u8) -> Result<u8> {
        Ok(__singleton_value + options + succeeded)
    }

    async fn all() -> std::result::Result<(), cluster_singleton::Error> {
        let _aliased = aliased_result(false).await?;
        let _shadowing = shadowing(1, 2, 3, 4).await?;
        let _options = shadowing_options(1, 2, 3).await?;
        Ok(())
    }

    // In a module of its own, out of the shadowing's reach: `#[tokio::test]`'s expansion is not
    // what this case is about.
    mod run {
        #[tokio::test]
        async fn hygiene() {
            let _ = super::std_like::Result;
            let runtime = super::super::memory("hygiene");
            runtime.scope(super::all()).await.expect("runs");
        }
    }
}

mod impl_trait {
    use std::fmt::Display;

    use cluster_singleton::{singleton, Outcome};

    // `impl Trait` in the return type: the fake return edge must not spell it out
    // (see tokio-rs/tracing#1615).
    #[singleton(key = "banner", ttl = "10s")]
    async fn banner(name: &str) -> impl Display + '_ {
        name
    }

    #[singleton(key = "evens", ttl = "10s")]
    async fn evens(limit: u32) -> Result<impl Iterator<Item = u32>, String> {
        if limit == 0 {
            return Err("no numbers".to_owned());
        }
        Ok((0..limit).filter(|n| n % 2 == 0))
    }

    async fn show() -> Result<(), cluster_singleton::Error> {
        if let Outcome::Ran(banner) = banner("nightly").await? {
            println!("{banner}");
        }
        if let Outcome::Ran(Ok(evens)) = evens(10).await? {
            println!("{}", evens.sum::<u32>());
        }
        Ok(())
    }

    #[tokio::test]
    async fn impl_trait() {
        let runtime = super::memory("impl-trait");
        runtime.scope(show()).await.expect("runs");
    }
}

mod key_placeholders {
    use std::fmt::Display;
    use std::future::Future;

    use cluster_singleton::{singleton, Outcome};

    // `customer` is not `Copy`: the key is formatted before the body takes it by value.
    #[singleton(key = "invoice:{customer}", ttl = "10m")]
    async fn issue_invoice(customer: String, amount: u64) -> String {
        format!("{customer} owes {amount}")
    }

    #[singleton(key = "batch:{region}:{batch}:{region}", ttl = "1m")]
    async fn batch(region: &str, mut batch: u32) -> u32 {
        batch += 1;
        println!("{region}");
        batch
    }

    // `{{` and `}}` are braces in the key: this one is `set-{7}`.
    #[singleton(key = "set-{{{id}}}", ttl = "1m")]
    async fn braces(id: u8) -> u8 {
        id
    }

    // No placeholder: braces only.
    #[singleton(key = "literal-{{braces}}", ttl = "1m")]
    async fn literal_braces() {}

    #[singleton(key = "kind:{type}:{r#type}", ttl = "1m")]
    async fn raw_identifier(r#type: &str) -> usize {
        r#type.len()
    }

    #[singleton(key = "{name}", ttl = "1m")]
    async fn only_a_placeholder<T: Display + Send + Sync>(name: T) -> String {
        name.to_string()
    }

    struct Tenant {
        name: String,
    }

    impl Tenant {
        #[singleton(key = "tenant:{job}", ttl = "1m", wait = "5s")]
        async fn run(&self, job: &str) -> String {
            format!("{} ran {job}", self.name)
        }
    }

    // A placeholder names the parameter even when the key comes from outside the macro that
    // declares the parameter.
    macro_rules! per_customer {
        ($name:ident, $key:expr, $extra:ident) => {
            #[singleton(key = $key, ttl = "1m")]
            async fn $name(customer_id: u64, $extra: u32) -> u64 {
                customer_id + u64::from($extra)
            }
        };
    }

    per_customer!(from_a_macro, "customer:{customer_id}:{extra}", extra);

    /// Users hand these futures to `tokio::spawn`, which needs `Send + 'static`.
    fn assert_spawnable<F: Future + Send + 'static>(_: F) {}

    async fn all() -> Result<(), cluster_singleton::Error> {
        if let Outcome::Ran(text) = issue_invoice("acme".to_owned(), 3).await? {
            println!("{text}");
        }
        let _batch = batch("eu", 1).await?;
        let _braces = braces(7).await?;
        let _literal = literal_braces().await?;
        let _raw = raw_identifier("daily").await?;
        let _only = only_a_placeholder(5).await?;
        let tenant = Tenant {
            name: "acme".to_owned(),
        };
        let _ran = tenant.run("cleanup").await?;
        let _macro = from_a_macro(1, 2).await?;
        Ok(())
    }

    #[tokio::test]
    async fn key_placeholders() {
        let runtime = super::memory("key-placeholders");
        assert_spawnable(issue_invoice("acme".to_owned(), 3));
        runtime.scope(all()).await.expect("runs");
    }
}

mod through_macro_rules {
    use cluster_singleton::singleton;

    // Values handed over as `$key:expr` arrive wrapped in an invisible group; they are still
    // string literals.
    macro_rules! job {
        ($name:ident, $key:expr, $ttl:literal) => {
            #[singleton(key = $key, ttl = $ttl)]
            async fn $name() -> u8 {
                1
            }
        };
    }

    job!(first, "first-job", "10s");
    job!(second, "second-job", "1m");

    async fn both() -> Result<(), cluster_singleton::Error> {
        let _first = first().await?;
        let _second = second().await?;
        Ok(())
    }

    #[tokio::test]
    async fn through_macro_rules() {
        let runtime = super::memory("through-macro-rules");
        runtime.scope(both()).await.expect("runs");
    }
}

mod methods {
    use cluster_singleton::{singleton, Outcome};

    struct Invoices {
        issued: u64,
    }

    impl Invoices {
        #[singleton(key = "invoices-count", ttl = "30s")]
        async fn count(&self) -> u64 {
            self.issued
        }

        #[singleton(key = "invoices-issue", ttl = "1h")]
        async fn issue(&mut self, how_many: u64) -> u64 {
            self.issued += how_many;
            self.issued
        }

        #[singleton(key = "invoices-archive", ttl = "1h")]
        async fn archive(self) -> Self {
            Invoices { issued: 0 }
        }

        #[singleton(key = "invoices-new", ttl = "500ms")]
        async fn new_batch() -> Self {
            Self { issued: 0 }
        }
    }

    async fn hourly() -> Result<u64, cluster_singleton::Error> {
        let mut invoices = match Invoices::new_batch().await? {
            Outcome::Ran(invoices) => invoices,
            Outcome::Skipped(_) => return Ok(0),
        };
        let _issued: Outcome<u64> = invoices.issue(3).await?;
        let counted = invoices.count().await?.ran_value().unwrap_or_default();
        let _archived: Outcome<Invoices> = invoices.archive().await?;
        Ok(counted)
    }

    #[tokio::test]
    async fn methods() {
        let runtime = super::memory("methods");
        runtime.scope(hourly()).await.expect("runs");
    }
}

mod options {
    use std::fmt::Display;

    use cluster_singleton::{singleton, Outcome};

    #[derive(Debug)]
    pub struct ReportError;

    #[singleton(key = "waits", ttl = "10s", wait = "30s")]
    async fn waits() -> u8 {
        1
    }

    #[singleton(key = "no-renewal", ttl = "10m", renew = false)]
    async fn no_renewal() {}

    #[singleton(key = "renewal-on", ttl = "10m", renew = true, max_hold = "10m")]
    async fn renewal_on() {}

    #[singleton(key = "bounded", ttl = "10m", max_hold = "1h 30m")]
    async fn bounded() -> Result<(), ReportError> {
        Ok(())
    }

    #[singleton(key = "cancelled-when-lost", ttl = "1m", on_lost = "cancel")]
    async fn cancelled_when_lost() {}

    #[singleton(key = "finishes-when-lost", ttl = "1m", on_lost = "continue")]
    async fn finishes_when_lost(rows: Vec<u32>) -> usize {
        rows.len()
    }

    #[singleton(key = "held", ttl = "1m", min_hold = "1m")]
    async fn held() -> Result<u32, ReportError> {
        Err(ReportError)
    }

    #[singleton(key = "daily", ttl = "10m", slot = "1d")]
    async fn daily() -> Result<(), ReportError> {
        Ok(())
    }

    #[singleton(key = "fenced", ttl = "1m", fencing = true)]
    async fn fenced() -> Option<u64> {
        cluster_singleton::lease().and_then(|lease| lease.fencing_token())
    }

    // Every option at once, in another order than the expansion's.
    #[singleton(
        fencing = false,
        slot = "1h",
        min_hold = "50s",
        on_lost = "continue",
        max_hold = "2h",
        renew = true,
        wait = "500ms",
        crate = "::cluster_singleton",
        ttl = "1m",
        key = "everything"
    )]
    async fn everything() -> Result<String, ReportError> {
        Ok("done".to_owned())
    }

    // The body's success is judged at the declared return type, whatever it names.
    type Judged<'a> = Result<&'a str, ReportError>;

    struct Report {
        title: String,
    }

    impl Report {
        #[singleton(key = "report-title", ttl = "1m", min_hold = "30s")]
        async fn title(&self) -> &str {
            &self.title
        }

        #[singleton(key = "report-judged", ttl = "1m", min_hold = "30s")]
        async fn judged<'a>(&'a self, fail: bool) -> Judged<'a> {
            if fail {
                return Err(ReportError);
            }
            Ok(&self.title)
        }

        #[singleton(key = "report-copy", ttl = "1m", min_hold = "30s")]
        async fn copy(&self) -> Self {
            Report {
                title: self.title.clone(),
            }
        }

        #[singleton(key = "report-generic", ttl = "1m", min_hold = "30s")]
        async fn generic<T: Display + Send>(
            &self,
            value: T,
        ) -> Result<Option<T>, Box<dyn std::error::Error + Send + Sync + '_>> {
            println!("{}: {value}", self.title);
            Ok(Some(value))
        }

        #[singleton(key = "report-shown", ttl = "1m", min_hold = "30s")]
        async fn shown(&self) -> Result<impl Display + '_, ReportError> {
            Ok(&self.title)
        }
    }

    async fn nightly() -> Result<(), cluster_singleton::Error> {
        let _waits = waits().await?;
        let _no_renewal = no_renewal().await?;
        let _renewal_on = renewal_on().await?;
        let _bounded = bounded().await?;
        let _cancelled = cancelled_when_lost().await?;
        let _finished = finishes_when_lost(vec![1, 2]).await?;
        let _held = held().await?;
        let _daily = daily().await?;
        if let Outcome::Ran(Some(token)) = fenced().await? {
            println!("{token}");
        }
        if let Outcome::Ran(Ok(text)) = everything().await? {
            println!("{text}");
        }
        let report = Report {
            title: "nightly".to_owned(),
        };
        let _title = report.title().await?;
        let _judged = report.judged(false).await?;
        let _copy = report.copy().await?;
        let _generic = report.generic(3).await?;
        if let Outcome::Ran(Ok(shown)) = report.shown().await? {
            println!("{shown}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn options() {
        let runtime = super::memory("options");
        runtime.scope(nightly()).await.expect("runs");
    }
}

mod result_question_mark {
    use std::num::ParseIntError;

    use cluster_singleton::{singleton, Outcome};

    #[derive(Debug)]
    enum ImportError {
        Empty,
        Parse(ParseIntError),
    }

    impl std::fmt::Display for ImportError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                ImportError::Empty => f.write_str("nothing to import"),
                ImportError::Parse(error) => write!(f, "not a number: {error}"),
            }
        }
    }

    impl From<ParseIntError> for ImportError {
        fn from(error: ParseIntError) -> Self {
            ImportError::Parse(error)
        }
    }

    #[singleton(key = "import", ttl = "2m")]
    async fn import(lines: &[&str]) -> Result<u64, ImportError> {
        if lines.is_empty() {
            return Err(ImportError::Empty);
        }
        let mut total = 0;
        for line in lines {
            // `?` converts through `From`, as it would without the attribute.
            let value: u64 = line.trim().parse()?;
            if value == 0 {
                return Ok(total);
            }
            total += value;
        }
        Ok(total)
    }

    #[singleton(key = "import-boxed", ttl = "2m")]
    async fn import_boxed(line: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(line.parse::<u64>()?)
    }

    async fn run() -> Result<(), Box<dyn std::error::Error>> {
        match import(&["1", "2"]).await? {
            Outcome::Ran(Ok(total)) => println!("imported {total}"),
            Outcome::Ran(Err(error)) => println!("import failed: {error}"),
            Outcome::Skipped(why) => println!("skipped: {why}"),
        }
        if let Outcome::Ran(parsed) = import_boxed("7").await? {
            println!("{}", parsed.map_err(|error| error.to_string())?);
        }
        Ok(())
    }

    #[tokio::test]
    async fn result_question_mark() {
        let runtime = super::memory("result-question-mark");
        runtime.scope(run()).await.expect("runs");
    }
}

mod send {
    use std::future::Future;

    use cluster_singleton::singleton;

    struct Cache {
        entries: Vec<String>,
    }

    impl Cache {
        #[singleton(key = "cache-warmup", ttl = "5m")]
        async fn warm_up(&self) -> usize {
            self.entries.len()
        }
    }

    #[singleton(key = "send-check", ttl = "5m")]
    async fn job(names: Vec<String>) -> usize {
        names.len()
    }

    /// Users hand these futures to `tokio::spawn`, which needs `Send + 'static`.
    fn assert_spawnable<F: Future + Send + 'static>(_: F) {}

    fn assert_send<F: Future + Send>(_: F) {}

    #[tokio::test]
    async fn send() {
        let runtime = super::memory("send");
        assert_spawnable(job(vec!["a".to_owned()]));
        let cache = Cache {
            entries: Vec::new(),
        };
        assert_send(cache.warm_up());
        let spawned = tokio::spawn(runtime.scope(job(vec!["a".to_owned()])));
        let ran = spawned.await.expect("the task ends").expect("runs");
        assert_eq!(ran.ran_value(), Some(1));
    }
}

mod trait_impl {
    use cluster_singleton::{singleton, Error, Outcome};

    trait Job {
        async fn run(&self, batch: u32) -> Result<Outcome<u32>, Error>;

        async fn run_default(&self) -> Result<Outcome<&'static str>, Error>;
    }

    struct Warmup;

    impl Job for Warmup {
        #[singleton(key = "cache-warmup", ttl = "5m")]
        async fn run(&self, batch: u32) -> u32 {
            batch * 2
        }

        #[singleton(key = "cache-warmup-default", ttl = "5m")]
        async fn run_default(&self) -> &'static str {
            "warm"
        }
    }

    async fn run_job(job: &impl Job) -> Result<Option<u32>, Error> {
        let _default = job.run_default().await?;
        Ok(job.run(10).await?.ran_value())
    }

    #[tokio::test]
    async fn trait_impl() {
        let runtime = super::memory("trait-impl");
        let ran = runtime.scope(run_job(&Warmup)).await.expect("runs");
        assert_eq!(ran, Some(20));
    }
}

mod unit_return {
    use cluster_singleton::{singleton, Outcome};

    #[singleton(key = "heartbeat", ttl = "15s")]
    async fn heartbeat() {}

    #[singleton(key = "log-rotation", ttl = "1m")]
    async fn rotate_logs(files: &[&str]) {
        if files.is_empty() {
            return;
        }
        for file in files {
            println!("rotating {file}");
        }
    }

    async fn tick() -> Result<(), cluster_singleton::Error> {
        let Outcome::Ran(()) = heartbeat().await? else {
            return Ok(());
        };
        let _rotated: Outcome<()> = rotate_logs(&["app.log"]).await?;
        Ok(())
    }

    #[tokio::test]
    async fn unit_return() {
        let runtime = super::memory("unit-return");
        runtime.scope(tick()).await.expect("runs");
    }
}
