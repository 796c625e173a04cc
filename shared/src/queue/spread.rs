//! What the store does across the shards of a sharded queue (see [`super::shards`]): each
//! script runs in one shard, and these steps tie the shards together.
//!
//! - Claiming goes round every shard from a rotating start until it has what it asked for,
//!   so each shard is served first in turn and an empty shard costs one round trip; a shard
//!   that cannot be reached (its master failing over) is skipped for this round.
//! - Priorities hold across shards: a kind with kinds ahead of it first looks in every
//!   shard for their waiting jobs (`fetch.lua` only sees its own shard).
//! - Limits hold across shards: a kind's concurrency and rate are kept in the first shard,
//!   which admits each claim before it goes round the shards (`admit.lua`) and holds one
//!   permit per job claimed until its attempt ends or its lease runs out (`permits.lua`).
//!   A kind the admission found without limits is remembered, and its next claims skip
//!   admission: each shard's copy of the controls is checked instead, and a limit found
//!   there stops the claim (taking nothing from that shard) and sends the next through
//!   admission again. So a new limit holds from the moment every shard has its copy, which
//!   the copier writes one shard after another.
//! - Idle workers wait on the first shard's wake lists, so every push wakes them there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::Duration;

use redis::Script;

use super::{Claim, ClaimRef, QueueStore, WAKE_CAP, millis};
use crate::jobs::Queue;

static ADMIT: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("admit.lua")));
static PERMITS: LazyLock<Script> = LazyLock::new(|| super::script(include_str!("permits.lua")));

/// How long a kind held back by a kind ahead of it waits before looking again, as in
/// `fetch.lua`.
const AHEAD_WAIT: Duration = Duration::from_millis(50);

/// Names each claim's reservations (with the worker's name).
static NEXT_CLAIM: AtomicU64 = AtomicU64::new(1);

/// How a claim in one shard keeps its kind's limits (`fetch.lua`'s ARGV[10]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Limits {
    /// In this shard: the queue has only the one.
    Here,
    /// Already, by `admit.lua`.
    Admitted,
    /// None, as the last admission found: a limit in the shard's controls stops the claim.
    NoneHeard,
}

impl Limits {
    pub(super) fn arg(self) -> &'static str {
        match self {
            Self::Here => "0",
            Self::Admitted => "1",
            Self::NoneHeard => "u",
        }
    }
}

/// The kinds (by queue) whose last admission found no limits.
#[derive(Default)]
pub(super) struct Unlimited(RwLock<HashSet<(Queue, &'static str)>>);

impl Unlimited {
    fn has(&self, queue: Queue, kind: &'static str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(&(queue, kind))
    }

    fn set(&self, queue: Queue, kind: &'static str, unlimited: bool) {
        let mut kinds = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if unlimited {
            kinds.insert((queue, kind));
        } else {
            kinds.remove(&(queue, kind));
        }
    }
}

impl QueueStore {
    /// Claims up to `n` jobs of `kind`, going round the shards; see the module doc.
    pub(super) async fn claim_round(
        &self,
        queue: Queue,
        kind: &str,
        worker: &str,
        n: usize,
    ) -> redis::RedisResult<(Vec<Claim>, Duration)> {
        if ahead_matters(self, kind) && ahead_elsewhere(self, queue, kind).await? {
            return Ok((Vec::new(), AHEAD_WAIT));
        }
        // Only kinds the registry knows are remembered (by their static name).
        let known = crate::jobs::spec(kind).map(|spec| spec.kind);
        if let Some(name) = known.filter(|name| self.unlimited.has(queue, name)) {
            let (claims, wait, limited) =
                claim_shards(self, queue, kind, worker, n, Limits::NoneHeard).await?;
            if limited {
                self.unlimited.set(queue, name, false);
                // Admitted at once, rather than after the empty shards' wait.
                return Ok((claims, Duration::ZERO));
            }
            return Ok((claims, wait));
        }
        let holder = format!("{worker}@{}", NEXT_CLAIM.fetch_add(1, Ordering::Relaxed));
        let permits = self.key(queue, &format!("permits:{kind}"));
        let bucket = self.key(queue, &format!("bucket:{kind}"));
        let (admitted, admit_wait, limits): (usize, u64, u8) = ADMIT
            .key(self.key(queue, "controls"))
            .key(&permits)
            .key(&bucket)
            .arg(kind)
            .arg(n)
            .arg(&holder)
            .arg(millis(self.settings().lease))
            .invoke_async(&mut self.connection())
            .await?;
        if let Some(name) = known {
            // Nothing admitted without limits: Redis has no copy of the controls yet.
            self.unlimited.set(queue, name, limits == 0 && admitted > 0);
        }
        if admitted == 0 {
            return Ok((Vec::new(), Duration::from_millis(admit_wait)));
        }
        let (mut claims, wait, _) =
            claim_shards(self, queue, kind, worker, admitted, Limits::Admitted).await?;
        if limits > 0 {
            claims.iter_mut().for_each(|claim| claim.permit = true);
            let names: Vec<String> =
                claims.iter().map(|claim| claim.claim_ref().permit_name()).collect();
            let settled: redis::RedisResult<i64> = PERMITS
                .key(&permits)
                .key(&bucket)
                .arg("settle")
                .arg(millis(self.settings().lease))
                .arg(&holder)
                .arg(admitted)
                .arg(limits)
                .arg(names)
                .invoke_async(&mut self.connection())
                .await;
            if let Err(err) = settled {
                // The claims stand; their reservations lapse after a lease.
                tracing::warn!(queue = queue.as_str(), kind, error = %err, "cannot turn reservations into permits");
            }
        }
        let wait = if claims.is_empty() {
            wait.max(Duration::from_millis(admit_wait))
        } else {
            Duration::ZERO
        };
        Ok((claims, wait))
    }

    /// Renews (`renew`) or ends (`drop`) the permits of those of `claims` that hold one.
    pub(super) async fn permits<'a>(
        &self,
        queue: Queue,
        mode: &str,
        claims: impl Iterator<Item = &'a ClaimRef>,
    ) -> redis::RedisResult<()> {
        let held = claims.filter(|claim| claim.permit.is_some());
        for (kind, group) in grouped(held, |claim| claim.permit.as_deref().unwrap_or_default()) {
            let _: i64 = PERMITS
                .key(self.key(queue, &format!("permits:{kind}")))
                .key(self.key(queue, &format!("bucket:{kind}")))
                .arg(mode)
                .arg(millis(self.settings().lease))
                .arg("")
                .arg(0)
                .arg(0)
                .arg(group.iter().map(|claim| claim.permit_name()).collect::<Vec<_>>())
                .invoke_async(&mut self.connection())
                .await?;
        }
        Ok(())
    }
}

/// Claims up to `n` jobs of `kind` (admitted, or of a kind without limits), going round the
/// shards from the next in turn; also whether a shard stopped it with a limit.
async fn claim_shards(
    store: &QueueStore,
    queue: Queue,
    kind: &str,
    worker: &str,
    n: usize,
    limits: Limits,
) -> redis::RedisResult<(Vec<Claim>, Duration, bool)> {
    let (mut claims, mut wait, mut failed) = (Vec::new(), None::<Duration>, None);
    for shard in store.shards.round() {
        match store.claim_in(queue, shard, kind, worker, n - claims.len(), limits).await {
            Ok((more, _, true)) => {
                claims.extend(more);
                return Ok((claims, Duration::ZERO, true));
            }
            Ok((more, held, false)) => {
                claims.extend(more);
                if !held.is_zero() {
                    wait = Some(wait.map_or(held, |w| w.min(held)));
                }
            }
            Err(err) => {
                tracing::warn!(queue = queue.as_str(), shard, error = %err, "cannot claim from a shard; trying the others");
                failed = Some(err);
            }
        }
        if claims.len() >= n {
            break;
        }
    }
    match failed {
        Some(err) if claims.is_empty() && wait.is_none() => Err(err),
        _ if !claims.is_empty() => Ok((claims, Duration::ZERO, false)),
        _ => Ok((claims, wait.unwrap_or_default(), false)),
    }
}

/// Whether claiming `kind` has to look across shards for the kinds ahead of it.
pub(super) fn ahead_matters(store: &QueueStore, kind: &str) -> bool {
    store.shards.count() > 1
        && crate::jobs::spec(kind).is_some_and(|spec| crate::jobs::ahead_of(spec).next().is_some())
}

/// Whether a kind ahead of `kind`, not paused, has jobs waiting in any shard.
async fn ahead_elsewhere(store: &QueueStore, queue: Queue, kind: &str) -> redis::RedisResult<bool> {
    let Some(spec) = crate::jobs::spec(kind) else {
        return Ok(false);
    };
    let ahead: Vec<&str> = crate::jobs::ahead_of(spec).collect();
    for shard in store.shards.all() {
        let mut pipe = redis::pipe();
        for kind in &ahead {
            pipe.llen(store.key_in(queue, shard, &format!("pending:{kind}")))
                .llen(store.key_in(queue, shard, &format!("owners:{kind}")))
                .hget(store.key_in(queue, shard, "controls"), format!("paused:{kind}"));
        }
        let found: Vec<(u64, u64, Option<String>)> =
            pipe.query_async(&mut store.connection()).await?;
        if found
            .iter()
            .any(|(pending, owners, paused)| pending + owners > 0 && paused.as_deref() != Some("1"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Puts one wake token per job pushed to another shard on the first shard's wake lists,
/// where idle workers block.
pub(super) async fn wake<'a>(
    store: &QueueStore,
    queue: Queue,
    kinds: impl Iterator<Item = &'a str>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for kind in kinds {
        let key = store.key(queue, &format!("wake:{kind}"));
        let cap = isize::try_from(WAKE_CAP).unwrap_or(isize::MAX);
        pipe.rpush(&key, "1").ignore().ltrim(&key, -cap, -1).ignore();
    }
    pipe.query_async(&mut store.connection()).await
}

/// `items` grouped by `key`, the groups in the order of their first items.
pub(crate) fn grouped<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, group)) => group.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}
