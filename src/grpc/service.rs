//! `readtier.v1.ReadTier`'s five methods over the node's [`App`]: its catalog, its
//! member lookups, its waiting limit (shared with HTTP) and its inspector.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use super::batch::BatchAnswer;
use super::convert::{self, entitlement};
use super::error::GrpcError;
use super::feed::{CatalogFeed, FeedState, Filter};
use super::metrics::{GrpcMetrics, Method};
use super::{deadline, pb, HEARTBEAT};
use crate::admission::{Face, Path, Reason};
use crate::catalog::{clock_ms, PlansError};
use crate::http::{App, MAX_BATCH_IDS};
use crate::lookup::{Entry, LookupError, ServedFrom};
use crate::member;

pub struct ReadTierService {
    /// What HTTP answers from: catalog, members, inspector, the waiting limit.
    app: Arc<App>,
    /// The catalog as messages, for `GetPlans` and `WatchCatalog`.
    feed: Arc<CatalogFeed>,
    /// Cancelled when the node stops accepting: ends `WatchCatalog` streams, which
    /// would otherwise hold their connections open through the drain.
    stop: CancellationToken,
    metrics: GrpcMetrics,
}

type Answer<T> = Result<Response<T>, Status>;

impl ReadTierService {
    pub fn new(app: Arc<App>, feed: Arc<CatalogFeed>, stop: CancellationToken) -> Self {
        ReadTierService {
            app,
            feed,
            stop,
            metrics: GrpcMetrics::register(),
        }
    }

    /// Counts an answer and turns it into tonic's.
    fn finish<T>(&self, method: Method, r: Result<T, GrpcError>) -> Answer<T> {
        match r {
            Ok(t) => {
                self.metrics.record(method, Code::Ok);
                Ok(Response::new(t))
            }
            Err(e) => {
                self.metrics.record(method, e.code());
                Err(e.into())
            }
        }
    }

    fn plans(&self, req: &pb::GetPlansRequest) -> Result<pb::CountryPlans, GrpcError> {
        let cc = convert::country_code(&req.country).map_err(GrpcError::InvalidArgument)?;
        let visitor = (!req.visitor.is_empty()).then_some(req.visitor.as_str());
        let partner = (!req.partner.is_empty()).then_some(req.partner.as_str());
        let snapshot = self.app.catalog.load();
        // The same entry point as `GET /v1/plans`: the answer of the period in force now,
        // for this visitor's cells and partner; decoded from its rendering, so the
        // message says exactly what the HTTP answer says.
        let answer = snapshot
            .plans(cc, visitor, partner, clock_ms)
            .map_err(|e| match e {
                PlansError::UnknownCountry(_) => GrpcError::NotFound(format!(
                    "no plans are offered in {}",
                    String::from_utf8_lossy(&cc)
                )),
                other => GrpcError::InvalidArgument(other.to_string()),
            })?;
        convert::country_plans(&answer.body, answer.until_ms)
            .map_err(|e| GrpcError::Internal(format!("cannot decode a plans answer: {e}")))
    }

    /// A member through L1, else (admitted under the waiting limit, or shed) L2 and
    /// the store, bounded by `http.request_timeout` and the caller's deadline.
    async fn lookup(
        &self,
        id: u64,
        path: Path,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(Entry, ServedFrom), GrpcError> {
        if let Some(entry) = self.app.members.get_l1(id) {
            return Ok((entry, ServedFrom::L1));
        }
        let _waiting = self
            .app
            .wait_here(id, Face::Grpc, path, 1)
            .ok_or(GrpcError::Shed)?;
        self.bounded(metadata, self.app.members.get(id))
            .await
            .inspect_err(|e| self.count_store_shed(e, path))
    }

    /// Counts a lookup whose store read found no permit in time as shed.
    fn count_store_shed(&self, e: &GrpcError, path: Path) {
        if matches!(e, GrpcError::Lookup(LookupError::Overloaded(_))) {
            self.app.admission.count(Face::Grpc, path, Reason::Store);
        }
    }

    /// A lookup that has to wait, bounded by `http.request_timeout` or the caller's
    /// deadline if sooner (its passing is then DEADLINE_EXCEEDED, not UNAVAILABLE).
    async fn bounded<T>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        lookup: impl std::future::Future<Output = Result<T, LookupError>>,
    ) -> Result<T, GrpcError> {
        let limit = self.app.limits.request_timeout;
        let (wait, theirs) = match deadline::of(metadata) {
            Some(d) if d < limit => (d, true),
            _ => (limit, false),
        };
        // tokio's timer counts whole milliseconds and polls the lookup first: at one
        // or under, a fast store read would answer a caller that has already given
        // up. One included: a client rounds what is left up to its timeout's unit,
        // so a caller's "1m" may mean next to nothing left (a Python grpcio call with
        // a 1 µs timeout got OK from a fast store read in `.ci/run` once: its header
        // must have read 1 ms or more).
        if theirs && wait <= Duration::from_millis(1) {
            return Err(GrpcError::DeadlineExceeded);
        }
        match tokio::time::timeout(wait, lookup).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(lookup_failed(e)),
            Err(_) if theirs => Err(GrpcError::DeadlineExceeded),
            Err(_) => Err(GrpcError::TooSlow),
        }
    }

    async fn entitlement(
        &self,
        req: Request<pb::GetEntitlementRequest>,
    ) -> Result<pb::Entitlement, GrpcError> {
        let id = convert::member_id(req.get_ref().member_id, "member_id")
            .map_err(GrpcError::InvalidArgument)?;
        let (entry, from) = self.lookup(id, Path::Entitlement, req.metadata()).await?;
        self.app.inspector.sample(id, entry.version);
        let snapshot = self.app.catalog.load();
        match entry.member.as_ref() {
            Some(m) => Ok(entitlement(m, &snapshot, from, clock_ms())),
            None if entry.is_unreadable() => Err(GrpcError::Unreadable(id)),
            None => Err(GrpcError::NotFound(format!("there is no member {id}"))),
        }
    }

    async fn authorize(
        &self,
        req: Request<pb::AuthorizePlaybackRequest>,
    ) -> Result<pb::AuthorizePlaybackResponse, GrpcError> {
        let ask = req.get_ref();
        let id =
            convert::member_id(ask.member_id, "member_id").map_err(GrpcError::InvalidArgument)?;
        if !crate::http::params::valid_device_class(&ask.device_class) {
            return Err(GrpcError::InvalidArgument(
                "device_class must be 1 to 32 characters of a-z, 0-9, '_' or '-' (for example \"tv\")"
                    .into(),
            ));
        }
        let (entry, from) = self.lookup(id, Path::Authorize, req.metadata()).await?;
        self.app.inspector.sample(id, entry.version);
        let snapshot = self.app.catalog.load();
        if entry.is_unreadable() {
            return Err(GrpcError::Unreadable(id));
        }
        let m = entry.member.as_ref();
        let plan = m.and_then(|m| snapshot.plan(&m.plan_id)).map(|e| &e.plan);
        let reason = member::authorize(m, plan, &ask.device_class, ask.active_streams);
        Ok(pb::AuthorizePlaybackResponse {
            allowed: reason == member::Reason::Ok,
            reason: reason.as_str().to_string(),
            max_streams: plan.map_or(0, |p| p.max_streams),
            max_resolution: plan.map(|p| p.max_resolution.clone()),
            served_from: from.as_str().to_string(),
            catalog_version: snapshot.version(),
        })
    }

    async fn batch(
        &self,
        req: Request<pb::BatchGetEntitlementsRequest>,
    ) -> Result<BatchAnswer, GrpcError> {
        let ids = &req.get_ref().member_ids;
        if ids.is_empty() || ids.len() > MAX_BATCH_IDS {
            return Err(GrpcError::InvalidArgument(format!(
                "member_ids must hold 1 to {MAX_BATCH_IDS} ids; got {}",
                ids.len()
            )));
        }
        // The field's name is formatted only for the id that fails (formatting it for
        // every id cost ~480 instructions a member, callgrind).
        if let Some(i) = ids.iter().position(|id| !convert::is_member_id(*id)) {
            return Err(GrpcError::InvalidArgument(convert::member_id_problem(
                ids[i],
                &format!("member_ids[{i}]"),
            )));
        }
        let l1 = self.app.members.get_many_l1(ids);
        let found: Vec<(Entry, ServedFrom)> = if l1.iter().all(Option::is_some) {
            // Every id is in L1: nothing waits, so nothing is admitted or shed. (Sized
            // first: `flatten` tells `collect` nothing of the length, and it grew the
            // vector from empty.)
            let mut found = Vec::with_capacity(l1.len());
            found.extend(l1.into_iter().flatten().map(|e| (e, ServedFrom::L1)));
            found
        } else {
            let missing = l1.iter().filter(|e| e.is_none()).count();
            let first = ids
                .iter()
                .zip(&l1)
                .find_map(|(id, e)| e.is_none().then_some(*id))
                .unwrap_or(0);
            let _waiting = self
                .app
                .wait_here(first, Face::Grpc, Path::Batch, missing)
                .ok_or(GrpcError::Shed)?;
            self.bounded(req.metadata(), self.app.members.get_many_after(ids, l1))
                .await
                .inspect_err(|e| self.count_store_shed(e, Path::Batch))?
        };
        let snapshot = arc_swap::Guard::into_inner(self.app.catalog.load());
        Ok(BatchAnswer::new(ids, found, snapshot))
    }

    fn watch(&self, req: &pb::WatchCatalogRequest) -> Result<WatchStream, GrpcError> {
        let filter: Filter = if req.countries.is_empty() {
            None
        } else {
            Some(
                req.countries
                    .iter()
                    .map(|c| convert::country_code(c))
                    .collect::<Result<BTreeSet<_>, _>>()
                    .map_err(GrpcError::InvalidArgument)?,
            )
        };
        let watch = Watch {
            feed: self.feed.clone(),
            installed: self.feed.subscribe(),
            stop: self.stop.clone(),
            filter,
            known: (req.known_version != 0).then_some(req.known_version),
            held: None,
            held_version: 0,
            started: false,
            ended: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(watch, Watch::next)))
    }
}

/// The 503-like status of a failed lookup (logged unless it was a shed store fill).
fn lookup_failed(e: LookupError) -> GrpcError {
    if !matches!(e, LookupError::Overloaded(_)) {
        tracing::warn!(error = %e, "member lookup failed");
    }
    GrpcError::Lookup(e)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::CatalogUpdate, Status>> + Send>>;

/// One caller's `WatchCatalog`.
struct Watch {
    feed: Arc<CatalogFeed>,
    /// Wakes on every new feed state (coalesced: a slow caller skips to the newest).
    installed: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
    filter: Filter,
    /// The catalog version the caller said it holds (resolved to an epoch against
    /// the first state sent). Nothing older is ever sent: a caller that holds a newer
    /// version than this node (it last watched a node further ahead) hears only
    /// heartbeats naming its version until this node has caught up to it, then what
    /// changed since, as any resuming caller. Sending this node's older catalog would
    /// take the caller back in time (prices it has seen change would change back).
    known: Option<u64>,
    /// The feed epoch the caller holds, as far as this stream knows.
    held: Option<u64>,
    /// The catalog version of that state (heartbeats repeat it).
    held_version: u64,
    started: bool,
    ended: bool,
}

impl Watch {
    /// The next message: the catalog at once, then each newer state, a heartbeat
    /// when quiet, and UNAVAILABLE when the node stops.
    async fn next(mut self) -> Option<(Result<pb::CatalogUpdate, Status>, Watch)> {
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            // Marked seen before the state is read: a state stored after this read
            // wakes the loop below.
            self.installed.borrow_and_update();
            if !self.ahead(&self.feed.current()) {
                return Some((Ok(self.send_current()), self));
            }
            // Heartbeats say the caller's own version until this node reaches it.
            self.held_version = self.known.unwrap_or(0);
        }
        loop {
            tokio::select! {
                changed = self.installed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let state = self.feed.current();
                    if !self.ahead(&state) && state.epoch > self.held.unwrap_or(0) {
                        return Some((Ok(self.send_current()), self));
                    }
                }
                _ = tokio::time::sleep(HEARTBEAT) => {
                    let heartbeat = pb::CatalogUpdate {
                        version: self.held_version,
                        ..Default::default()
                    };
                    return Some((Ok(heartbeat), self));
                }
                _ = self.stop.cancelled() => {
                    self.ended = true;
                    return Some((Err(GrpcError::Draining.into()), self));
                }
            }
        }
    }

    /// Whether the caller holds a newer catalog version than `state` (nothing is sent
    /// until this node has caught up).
    fn ahead(&self, state: &FeedState) -> bool {
        self.known.is_some_and(|k| k > state.version)
    }

    fn send_current(&mut self) -> pb::CatalogUpdate {
        let state = self.feed.current();
        if let Some(k) = self.known.take() {
            self.held = state.epoch_of(k);
        }
        let update = state.update_since(self.held, &self.filter);
        self.held = Some(state.epoch);
        self.held_version = state.version;
        update
    }
}

#[tonic::async_trait]
impl pb::read_tier_server::ReadTier for ReadTierService {
    async fn get_plans(&self, req: Request<pb::GetPlansRequest>) -> Answer<pb::CountryPlans> {
        self.finish(Method::GetPlans, self.plans(req.get_ref()))
    }

    async fn get_entitlement(
        &self,
        req: Request<pb::GetEntitlementRequest>,
    ) -> Answer<pb::Entitlement> {
        let r = self.entitlement(req).await;
        self.finish(Method::GetEntitlement, r)
    }

    async fn authorize_playback(
        &self,
        req: Request<pb::AuthorizePlaybackRequest>,
    ) -> Answer<pb::AuthorizePlaybackResponse> {
        let r = self.authorize(req).await;
        self.finish(Method::AuthorizePlayback, r)
    }

    async fn batch_get_entitlements(
        &self,
        req: Request<pb::BatchGetEntitlementsRequest>,
    ) -> Answer<BatchAnswer> {
        let r = self.batch(req).await;
        self.finish(Method::BatchGetEntitlements, r)
    }

    type WatchCatalogStream = WatchStream;

    async fn watch_catalog(
        &self,
        req: Request<pb::WatchCatalogRequest>,
    ) -> Answer<Self::WatchCatalogStream> {
        self.finish(Method::WatchCatalog, self.watch(req.get_ref()))
    }
}
