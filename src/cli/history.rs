//! The history commands: `history`, `history tail`, `history catalog`, `restore` and
//! `reconcile --history` (see [`crate::store::history`] for the rules they follow).

use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::store::history::{Entry, Instant, MemberResult, Outcome, RestoreSpec, Row, State};
use crate::store::Store;

fn instant(flag: &str, text: &str) -> anyhow::Result<Instant> {
    Instant::parse(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn store(cfg: &Config) -> anyhow::Result<Store> {
    Ok(Store::open(&cfg.store)?)
}

/// A row image in one column: `status plan country v<version>`.
fn image(v: &Option<serde_json::Value>) -> String {
    let Some(v) = v else { return "-".into() };
    if let Some(row) = Row::of_image(v) {
        let version = v.get("version").map(|x| x.to_string()).unwrap_or_default();
        return format!("{} {} {} v{version}", row.status, row.plan_id, row.country);
    }
    if let Some(amount) = v.get("amount") {
        let cur = v.get("currency").and_then(|c| c.as_str()).unwrap_or("");
        return format!(
            "{} {}",
            amount.as_str().map_or(amount.to_string(), str::to_string),
            cur
        );
    }
    v.to_string()
}

fn table(entries: &[Entry]) {
    println!(
        "{:>10}  {:<27}  {:<6}  {:<18}  {:<28}  {:<28}  reason",
        "seq", "at", "op", "actor", "before", "after"
    );
    for e in entries {
        println!(
            "{:>10}  {:<27}  {:<6}  {:<18}  {:<28}  {:<28}  {}",
            e.seq,
            e.at,
            e.op,
            e.actor,
            image(&e.before),
            image(&e.after),
            e.reason.as_deref().unwrap_or("")
        );
    }
}

pub(super) async fn member(
    cfg: &Config,
    member: Option<u64>,
    as_of: Option<String>,
    json: bool,
    limit: i64,
    before: Option<i64>,
) -> anyhow::Result<()> {
    let id = member.context("name a member (readtier history MEMBER_ID), or use `history tail`")?;
    let id = i64::try_from(id).context("member id out of range")?;
    let store = store(cfg)?;
    if let Some(t) = as_of {
        let at = instant("--as-of", &t)?;
        let state = store.member_as_of(id, &at).await?;
        match state {
            State::Existed(row) if json => println!("{row}"),
            State::Existed(row) => println!("member {id} at {at}: {}", image(&Some(row))),
            State::Absent => anyhow::bail!("member {id} did not exist at {at}"),
            State::Unknown(why) => anyhow::bail!("member {id} at {at}: {why}"),
        }
        return Ok(());
    }
    let entries = store.member_history(id, limit, before).await?;
    if json {
        println!("{}", serde_json::to_string(&entries)?);
    } else if entries.is_empty() {
        println!("no history for member {id}");
    } else {
        table(&entries);
    }
    Ok(())
}

pub(super) async fn catalog(
    cfg: &Config,
    country: Option<String>,
    json: bool,
    limit: i64,
) -> anyhow::Result<()> {
    let store = store(cfg)?;
    let entries = store
        .catalog_history(country.map(|c| c.to_ascii_uppercase()), limit, None)
        .await?;
    if json {
        println!("{}", serde_json::to_string(&entries)?);
    } else {
        table(&entries);
    }
    Ok(())
}

/// Prints entries as JSON lines from `from` on; following, polls for new ones.
pub(super) async fn tail(cfg: &Config, from: Option<i64>, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let store = store(cfg)?;
    let mut after = from;
    let stdout = std::io::stdout();
    loop {
        let entries = store.history_after(after, 1000).await?;
        let n = entries.len();
        {
            let mut out = stdout.lock();
            for e in &entries {
                serde_json::to_writer(&mut out, e)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        if let Some(last) = entries.last() {
            after = Some(last.seq);
        }
        if n < 1000 {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `restore`'s switches.
pub(super) struct RestoreFlags {
    pub dry_run: bool,
    pub overwrite_later: bool,
    pub undo_inserts: bool,
    pub undo_deletes: bool,
    pub report: Option<std::path::PathBuf>,
}

/// A restore left members in conflict (exit status [`super::EXIT_CONFLICTS`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} members in conflict were left as they are (listed above; --overwrite-later reverts them)"
)]
pub(super) struct Conflicts(pub usize);

/// One member's line, as the terminal shows it.
fn line(r: &MemberResult, dry: bool) -> String {
    let show = |r: &Option<Row>| match r {
        Some(r) => {
            let lock = match (&r.price_locked_amount, &r.price_locked_currency) {
                (Some(a), c) => format!(
                    " locked {a} {}{}",
                    c.as_deref().unwrap_or(""),
                    r.price_locked_until
                        .as_ref()
                        .map_or(String::new(), |u| format!(" until {u}"))
                ),
                _ => String::new(),
            };
            format!("{} {} {}{lock}", r.status, r.plan_id, r.country)
        }
        None => "(absent)".into(),
    };
    let id = r.member_id;
    match r.outcome {
        Outcome::Restored if dry => format!(
            "member {id}: would restore: {} -> {}",
            show(&r.now),
            show(&r.then)
        ),
        Outcome::Restored => format!(
            "member {id}: restored: {} -> {}",
            show(&r.now),
            show(&r.then)
        ),
        Outcome::Conflict => {
            let l = r.later.as_ref();
            format!(
                "member {id}: conflict: {} by {}{} at {} came after; left as {} (would have written {})",
                l.map_or("a change", |l| l.op.as_str()),
                l.map_or("?", |l| l.actor.as_str()),
                l.and_then(|l| l.reason.as_ref()).map_or(String::new(), |r| format!(" ({r})")),
                l.map_or("?", |l| l.at.as_str()),
                show(&r.now),
                show(&r.then)
            )
        }
        Outcome::Skipped | Outcome::Unknown => format!(
            "member {id}: left alone: {}",
            r.why.as_deref().unwrap_or("")
        ),
        Outcome::Unchanged => format!("member {id}: unchanged"),
    }
}

pub(super) async fn restore(
    cfg: &Config,
    as_of: &str,
    members: Vec<u64>,
    changed_after: Option<String>,
    actor: Option<String>,
    reason: Option<String>,
    flags: RestoreFlags,
) -> anyhow::Result<()> {
    use std::io::Write;
    let spec = RestoreSpec {
        as_of: instant("--as-of", as_of)?,
        members: members
            .into_iter()
            .map(|m| i64::try_from(m).context("--member out of range"))
            .collect::<anyhow::Result<_>>()?,
        changed_after: changed_after
            .map(|t| instant("--changed-after", &t))
            .transpose()?,
        actor,
        reason,
        dry_run: flags.dry_run,
        overwrite_later: flags.overwrite_later,
        undo_inserts: flags.undo_inserts,
        undo_deletes: flags.undo_deletes,
    };
    let mut file = match &flags.report {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--report {}", p.display()))?,
        )),
        None => None,
    };
    let store = store(cfg)?;
    let started = std::time::Instant::now();
    // Progress on stderr after each batch, at most twice a second.
    let mut shown = std::time::Instant::now();
    let report = store
        .restore(&spec, |done, total, so_far| {
            if done == total || shown.elapsed() >= Duration::from_millis(500) {
                shown = std::time::Instant::now();
                eprintln!(
                    "restore: {done} of {total} members examined: {} restored, {} conflicts, {} skipped ({:.1}s)",
                    so_far.count(Outcome::Restored),
                    so_far.count(Outcome::Conflict),
                    so_far.count(Outcome::Skipped) + so_far.count(Outcome::Unknown),
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await?;
    let mut out = std::io::stdout().lock();
    for r in &report.results {
        writeln!(out, "{}", line(r, spec.dry_run))?;
        if let Some(f) = file.as_mut() {
            serde_json::to_writer(&mut *f, r)?;
            f.write_all(b"\n")?;
        }
    }
    if let Some(mut f) = file {
        f.flush()?;
    }
    let conflicts = report.count(Outcome::Conflict);
    writeln!(
        out,
        "{} {} of {} members with a selected change since {}: {} conflicts, {} unchanged, {} skipped, {} unknown ({:.2}s)",
        if spec.dry_run { "would restore" } else { "restored" },
        report.count(Outcome::Restored),
        report.selected,
        spec.as_of,
        conflicts,
        report.unchanged,
        report.count(Outcome::Skipped),
        report.count(Outcome::Unknown),
        started.elapsed().as_secs_f64()
    )?;
    if conflicts > 0 {
        return Err(Conflicts(conflicts).into());
    }
    Ok(())
}

pub(super) async fn reconcile(cfg: &Config) -> anyhow::Result<()> {
    let store = store(cfg)?;
    let started = std::time::Instant::now();
    let (checked, mismatches) = store.reconcile_history().await?;
    for m in &mismatches {
        println!(
            "member {}: history says {}, the row is {}",
            m.member_id,
            m.history
                .as_ref()
                .map_or("(absent)".into(), |v| v.to_string()),
            m.current
                .as_ref()
                .map_or("(absent)".into(), |v| v.to_string())
        );
    }
    println!(
        "history checked against {checked} members: {} mismatches in {:.2}s",
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    if !mismatches.is_empty() {
        anyhow::bail!("{} members differ from their history", mismatches.len());
    }
    Ok(())
}
