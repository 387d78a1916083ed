//! The history commands: `history`, `history tail`, `history catalog`, `restore` and
//! `reconcile --history` (see [`crate::store::history`] for the rules they follow).

use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::store::history::{Entry, Instant, RestoreSpec, Row, State};
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

pub(super) async fn restore(
    cfg: &Config,
    as_of: &str,
    members: Vec<u64>,
    changed_after: Option<String>,
    actor: Option<String>,
    reason: Option<String>,
    dry_run: bool,
) -> anyhow::Result<()> {
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
        dry_run,
    };
    let store = store(cfg)?;
    let started = std::time::Instant::now();
    let report = store.restore(&spec).await?;
    let show = |r: &Option<Row>| match r {
        Some(r) => format!("{} {} {}", r.status, r.plan_id, r.country),
        None => "(absent)".into(),
    };
    if dry_run {
        for a in report.actions.iter().take(1000) {
            println!(
                "member {}: {} -> {}",
                a.member_id,
                show(&a.now),
                show(&a.then)
            );
        }
        if report.actions.len() > 1000 {
            println!("… and {} more", report.actions.len() - 1000);
        }
    }
    for (id, why) in &report.unknown {
        println!("member {id}: left alone: {why}");
    }
    println!(
        "{} {} of {} selected members to their state at {} ({} already there, {} unknown) in {:.2}s",
        if dry_run { "would restore" } else { "restored" },
        report.actions.len(),
        report.selected,
        spec.as_of,
        report.unchanged,
        report.unknown.len(),
        started.elapsed().as_secs_f64()
    );
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
