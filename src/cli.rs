//! The `readtier` command line: `serve` (the default), `migrate`, `seed`, `relay`,
//! `reconcile`, `warm`, and the history commands `history`, `restore`.
//!
//! Exit statuses: 0 success, 64 invalid configuration or usage, 1 anything else.

mod history;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node;
use crate::plan::CatalogData;
use crate::relay::Relay;
use crate::store::Store;
use crate::tier::Tier;

/// Exit status for invalid configuration or usage (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// A restore that left members in conflict (someone else changed them after the
/// changes it reverts): the run did its work, and scripts must notice what it did not.
pub const EXIT_CONFLICTS: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "readtier",
    version,
    about = "The read tier for plan pricing and playback entitlement"
)]
struct Cli {
    /// A configuration file layered over config/default.toml (also READTIER_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Create the store's tables, indexes and change-capture triggers (idempotent).
    Migrate,
    /// Walk the store, compare every zone of the Redis tier, repair drift, print counts.
    Reconcile {
        /// Also write members the tier does not hold (reads fill them on demand anyway).
        #[arg(long)]
        fill_missing: bool,
        /// Instead: check every member's newest history entry against its current row
        /// (exit 1 on a mismatch); needs no Redis tier.
        #[arg(long, conflicts_with = "fill_missing")]
        history: bool,
    },
    /// A member's history (newest first), its state at an instant, or, with a
    /// subcommand, the catalog's history or every entry as JSON lines.
    #[command(args_conflicts_with_subcommands = true)]
    History {
        #[command(subcommand)]
        what: Option<HistoryCommand>,
        /// The member.
        member: Option<u64>,
        /// Its state at this RFC 3339 instant instead of its entries.
        #[arg(long, value_name = "T")]
        as_of: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Entries to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only entries older than this seq (the next page).
        #[arg(long, value_name = "SEQ")]
        before: Option<i64>,
    },
    /// Write members back to their state at an instant, as ordinary changes (recorded
    /// with actor readtier-restore), so the repair reaches every tier and node.
    Restore {
        /// The instant to go back to (RFC 3339).
        #[arg(long, value_name = "T")]
        as_of: String,
        /// Only these members (repeatable).
        #[arg(long = "member", value_name = "ID")]
        members: Vec<u64>,
        /// Only members with a change after this instant.
        #[arg(long, value_name = "T0")]
        changed_after: Option<String>,
        /// Only members with a change after T by this actor.
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// Only members with a change after T with this reason.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Revert even members someone else changed afterwards (the fields the
        /// reverted changes touched; the others keep their later values).
        #[arg(long)]
        overwrite_later: bool,
        /// Delete members the reverted changes created.
        #[arg(long)]
        undo_inserts: bool,
        /// Re-insert members the reverted changes deleted.
        #[arg(long)]
        undo_deletes: bool,
        /// Also write each member's outcome here, as JSON lines.
        #[arg(long, value_name = "FILE")]
        report: Option<std::path::PathBuf>,
    },
    /// Copy every member a live zone holds into another zone (a new zone, written
    /// only while it warms: see l2.write_only_zones).
    Warm {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Publish the store's change log on the change stream (one active relay, others standby).
    Relay {
        /// This relay's name in the lease (default: host name and process id).
        #[arg(long)]
        id: Option<String>,
    },
    /// Load the reference catalog (if the store has none) and N synthetic members, ids 1..=N.
    Seed {
        /// How many members to create or overwrite (0: none).
        #[arg(long, default_value_t = 0)]
        members: u64,
        /// Also load the observed 2023–2026 price changes (data/price-changes.csv) as
        /// `scheduled_prices` history (upserted: safe to repeat).
        #[arg(long)]
        price_history: bool,
    },
}

#[derive(Subcommand, Debug)]
enum HistoryCommand {
    /// Every history entry (members and catalog) as JSON lines, in commit-safe order,
    /// following new ones; resumable from the last seq printed.
    Tail {
        /// Start after the entry with this seq.
        #[arg(long, value_name = "SEQ")]
        from: Option<i64>,
        /// Stop at the end instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Catalog history (prices and plans), newest first.
    Catalog {
        /// Only this country's prices.
        #[arg(long)]
        country: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// Runs the command line; the return value is the process exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    // The configuration names the log's format and filter, so it is read first; its
    // errors go to stderr as plain text.
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("readtier: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Held until the process ends: dropping it flushes the spans not yet exported.
    let _logging = match crate::logging::install(&cfg.log, &cfg.otel) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("readtier: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("readtier: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cfg).await,
            Command::Migrate => migrate(&cfg).await,
            Command::Seed {
                members,
                price_history,
            } => seed(&cfg, members, price_history).await,
            Command::Relay { id } => relay(&cfg, id).await,
            Command::Reconcile { history: true, .. } => history::reconcile(&cfg).await,
            Command::Reconcile { fill_missing, .. } => reconcile(&cfg, fill_missing).await,
            Command::History {
                what: Some(HistoryCommand::Tail { from, no_follow }),
                ..
            } => history::tail(&cfg, from, !no_follow).await,
            Command::History {
                what:
                    Some(HistoryCommand::Catalog {
                        country,
                        json,
                        limit,
                    }),
                ..
            } => history::catalog(&cfg, country, json, limit).await,
            Command::History {
                what: None,
                member,
                as_of,
                json,
                limit,
                before,
            } => history::member(&cfg, member, as_of, json, limit, before).await,
            Command::Restore {
                as_of,
                members,
                changed_after,
                actor,
                reason,
                dry_run,
                overwrite_later,
                undo_inserts,
                undo_deletes,
                report,
            } => {
                let flags = history::RestoreFlags {
                    dry_run,
                    overwrite_later,
                    undo_inserts,
                    undo_deletes,
                    report,
                };
                history::restore(&cfg, &as_of, members, changed_after, actor, reason, flags).await
            }
            Command::Warm { from, to } => warm(&cfg, &from, &to).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<history::Conflicts>().is_some() => {
            eprintln!("readtier: {e:#}");
            ExitCode::from(EXIT_CONFLICTS)
        }
        Err(e) => {
            eprintln!("readtier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(cfg: &Config) -> anyhow::Result<()> {
    let store = Store::open(&cfg.store)?;
    let report = store.migrate().await?;
    println!("migrated {}", store.describe());
    for v in &report {
        println!("rule not yet kept by every row: {v}");
    }
    Ok(())
}

async fn seed(cfg: &Config, members: u64, price_history: bool) -> anyhow::Result<()> {
    let store = Store::open(&cfg.store)?;
    store.migrate().await?;
    if store.catalog_is_empty().await? {
        store
            .write_catalog(CatalogData::reference_with_examples()?)
            .await?;
        println!("seeded the reference catalog and the pricing examples");
    }
    if price_history {
        let scheduled = crate::plan::reference_price_history()?;
        let n = scheduled.len();
        store
            .write_catalog(CatalogData {
                version: 0,
                plans: Vec::new(),
                prices: Vec::new(),
                scheduled,
                experiments: Vec::new(),
                cells: Vec::new(),
                experiment_prices: Vec::new(),
                partner_offers: Vec::new(),
            })
            .await?;
        println!("loaded {n} scheduled prices (the 2023-2026 price history)");
    }
    if members == 0 {
        return Ok(());
    }
    let catalog = store.load_catalog().await?;
    let took = node::seed_members_into(&store, &catalog, members).await?;
    let secs = took.as_secs_f64();
    println!(
        "seeded {members} members in {secs:.2}s ({:.0} members/s) into {}",
        members as f64 / secs.max(1e-9),
        store.describe()
    );
    println!("history: one entry (op seed) records this bulk load, not one per member");
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let signals = Signals::install();
    let shutdown = CancellationToken::new();
    let running = node::start(cfg, shutdown.clone()).await?;
    let grpc = running
        .grpc_addr
        .map(|a| format!(" (grpc {a})"))
        .unwrap_or_default();
    println!(
        "readtier listening on http://{} (admin http://{}){grpc}",
        running.addr, running.admin_addr
    );
    tokio::spawn(async move {
        signals.recv().await;
        shutdown.cancel();
    });
    running.wait().await;
    Ok(())
}

fn tier_of(cfg: &Config) -> anyhow::Result<Tier> {
    Tier::from_config(cfg)?.ok_or_else(|| {
        anyhow::anyhow!("no Redis tier configured: set redis_urls (READTIER_REDIS_URLS)")
    })
}

async fn reconcile(cfg: &Config, fill_missing: bool) -> anyhow::Result<()> {
    let store = Store::open(&cfg.store)?;
    let tier = tier_of(cfg)?;
    let started = std::time::Instant::now();
    let report = crate::tier::reconcile::reconcile(&store, &tier, fill_missing).await?;
    print!("{report}");
    println!("took {:.2}s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn warm(cfg: &Config, from: &str, to: &str) -> anyhow::Result<()> {
    let tier = tier_of(cfg)?;
    let (f, t) = (tier.zone_index(from)?, tier.zone_index(to)?);
    if f == t {
        anyhow::bail!("--from and --to name the same zone");
    }
    let started = std::time::Instant::now();
    let (copied, skipped) = tier.warm(f, t).await?;
    println!(
        "warmed zone {to} from {from}: {copied} members copied, {skipped} already as new, in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn relay(cfg: &Config, id: Option<String>) -> anyhow::Result<()> {
    let holder = id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "relay".into());
        // Host and pid alone are not unique: two containers both run as pid 1 on
        // hosts of the same name. A random suffix makes the lease's fencing real.
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.finish() as u32
        };
        format!("{host}-{}-{nonce:08x}", std::process::id())
    });
    // The recorder first: the relay's metric handles are made when it is built.
    let prometheus = crate::telemetry::install();
    let relay = Relay::from_config(cfg, holder.clone())?;
    relay.store().migrate().await?;
    let signals = Signals::install();
    let admin_stop = CancellationToken::new();
    let mut admin_at = None;
    if !cfg.relay.admin_listen.trim().is_empty() {
        let addr: std::net::SocketAddr =
            cfg.relay.admin_listen.trim().parse().map_err(|e| {
                anyhow::anyhow!("relay.admin_listen {:?}: {e}", cfg.relay.admin_listen)
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("relay.admin_listen {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        tokio::spawn(crate::relay::admin::serve(
            listener,
            relay.health(),
            prometheus,
            admin_stop.clone(),
        ));
        tokio::spawn(crate::relay::admin::watch_lag(
            relay.health(),
            relay.store().clone(),
            admin_stop.clone(),
        ));
        admin_at = Some(bound);
    }
    println!("readtier relay {holder} started (standby until it holds the lease)");
    if let Some(at) = admin_at {
        println!("readtier relay admin on http://{at}");
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        signals.recv().await;
        stop.cancel();
    });
    relay.run(shutdown).await;
    admin_stop.cancel();
    Ok(())
}

/// SIGTERM and SIGINT, watched from the moment this is built: a signal that arrives
/// before the server is up still drains it instead of killing the process.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let watch = |kind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot watch signal");
                    None
                }
            };
            Signals {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => tracing::info!("SIGTERM: shutting down"),
                _ = next(&mut self.int) => tracing::info!("SIGINT: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
