//! Sharded queues (SPEC section 12): `TASKLANE_QUEUE_SHARDS=N` spreads each queue over N
//! namespaces, each under a hash tag of its own, so that on a Redis Cluster one queue spans up
//! to N masters instead of living on one.
//!
//! - Shard 0 is `<prefix>:{<queue>}:`, the namespace of an unsharded queue: N = 1 is the
//!   layout of before, and raising N leaves every job where it is. Shard s > 0 is
//!   `<prefix>:{<queue>:<s>}:`, or `{<queue>:<s>.<k>}` with the smallest k whose hash slot
//!   lies where shard s belongs: the 16384 slots split into N equal runs, and shard s sits
//!   in the middle of the s-th run after shard 0's. On a cluster of N masters owning equal
//!   runs of slots (as `redis-cli --cluster create` makes them) the N shards are on N
//!   different masters.
//! - A job lives in one shard all its life: `crc16(id) % N`, except two kinds of job pinned
//!   to shard 0. One with a unique key (a cron tick) lives beside its key's claim, so that
//!   the claim and the push stay one atomic step. One of a kind fair by owner (uploads)
//!   lives where the ring of its kind's owners is, so that owners take turns across the
//!   whole queue and each owner's jobs keep their order (`ready.lua`): such kinds are slow
//!   by nature (seconds of work per job), far below one master's ceiling. An operation by
//!   id looks in the id's shard, then in shard 0.
//! - Every script still runs in one shard, on one master; what spans shards is done by the
//!   store in Rust (see `spread.rs`): claiming goes round the shards from a rotating start,
//!   the first shard keeps the limits and admits every claim, controls are copied to every
//!   shard, and counts and listings add the shards up.
//! - Lowering N strands the jobs of the shards dropped: drain the queue (pause producers, or
//!   wait for `pending` to reach 0) before lowering it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::jobs::Queue;
use crate::redis::Keys;

/// Redis Cluster's number of hash slots.
const SLOTS: u32 = 16_384;
/// How close to its place a shard's slot must be.
const SLOT_WINDOW: u32 = 32;

/// The namespaces of every queue's shards, computed once; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shards {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Per queue (in [`Queue::ALL`]'s order), each shard's namespace, `...}:` included.
    namespaces: Vec<Vec<String>>,
    /// Where the next claim starts going round the shards, so that every shard is served
    /// first in turn.
    next: AtomicUsize,
}

impl Shards {
    pub fn new(keys: &Keys, count: u16) -> Self {
        let count = count.max(1);
        let namespaces = Queue::ALL
            .iter()
            .map(|queue| (0..count).map(|shard| namespace(keys, *queue, shard, count)).collect())
            .collect();
        Self { inner: Arc::new(Inner { namespaces, next: AtomicUsize::new(0) }) }
    }

    /// How many shards each queue has.
    pub fn count(&self) -> u16 {
        u16::try_from(self.inner.namespaces[0].len()).unwrap_or(1)
    }

    /// The namespace of one shard of `queue`, ending in `:`.
    pub fn ns(&self, queue: Queue, shard: u16) -> &str {
        &self.of_queue(queue)[usize::from(shard)]
    }

    fn of_queue(&self, queue: Queue) -> &[String] {
        let index = Queue::ALL.iter().position(|q| *q == queue).unwrap_or(0);
        &self.inner.namespaces[index]
    }

    /// The shard a new job goes to; `pinned`: a unique or fair job (see the module doc).
    pub fn of_job(&self, id: &str, pinned: bool) -> u16 {
        let count = self.count();
        if pinned || count == 1 {
            return 0;
        }
        crc16::State::<crc16::XMODEM>::calculate(id.as_bytes()) % count
    }

    /// Where a job with this id may be: its own shard, then shard 0 (a pinned job's).
    pub fn homes(&self, id: &str) -> Vec<u16> {
        match self.of_job(id, false) {
            0 => vec![0],
            shard => vec![shard, 0],
        }
    }

    /// Every shard, starting from the next one in turn.
    pub fn round(&self) -> impl Iterator<Item = u16> + use<> {
        let count = self.count();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % usize::from(count);
        let start = u16::try_from(start).unwrap_or(0);
        (0..count).map(move |i| (start + i) % count)
    }

    /// Every shard, in order.
    pub fn all(&self) -> std::ops::Range<u16> {
        0..self.count()
    }
}

/// The hash slot Redis Cluster gives a key.
pub fn slot(key: &str) -> u16 {
    let tagged = key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged.as_bytes()) % 16_384
}

fn namespace(keys: &Keys, queue: Queue, shard: u16, count: u16) -> String {
    let name = queue.as_str();
    if shard == 0 {
        return format!("{}:", keys.queue(name));
    }
    // The slots split into `count` equal runs; shard 0 is in one of them, shard s goes to the
    // middle of the s-th run after it.
    let count = u32::from(count);
    let first_run = u32::from(slot(&keys.queue(name))) * count / SLOTS;
    let run = (first_run + u32::from(shard)) % count;
    let middle = run * SLOTS / count + SLOTS / (2 * count);
    let fits = |tag: &str| {
        let at = u32::from(slot(&keys.queue(tag)));
        (at + SLOTS + SLOT_WINDOW / 2 - middle) % SLOTS < SLOT_WINDOW
    };
    let plain = format!("{name}:{shard}");
    let tag = std::iter::once(plain.clone())
        .chain((1..).map(|k| format!("{plain}.{k}")))
        .find(|tag| fits(tag))
        .unwrap_or(plain);
    format!("{}:", keys.queue(&tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // From the Redis Cluster specification's examples and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
    }

    #[test]
    fn one_shard_is_the_unsharded_layout() {
        let keys = Keys::new("tasklane");
        let shards = Shards::new(&keys, 1);
        assert_eq!(shards.ns(Queue::Emails, 0), "tasklane:{emails}:");
        assert_eq!(shards.of_job("any id", false), 0);
        assert_eq!(shards.round().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn shards_are_spread_over_the_slots() {
        // Whatever run shard 0's slot falls in, every shard is in a run of its own.
        for prefix in (0..200).map(|i| format!("t{i}")) {
            let keys = Keys::new(prefix);
            let shards = Shards::new(&keys, 3);
            let runs: std::collections::HashSet<u32> = shards
                .all()
                .map(|s| u32::from(slot(shards.ns(Queue::Emails, s))) * 3 / SLOTS)
                .collect();
            assert_eq!(runs.len(), 3);
        }
        let shards = Shards::new(&Keys::new("tasklane"), 3);
        assert_eq!(shards.ns(Queue::Emails, 0), "tasklane:{emails}:");
        assert_eq!(shards.of_job("a", true), 0);
        let placed: std::collections::HashSet<u16> =
            (0..100).map(|i| shards.of_job(&format!("job-{i}"), false)).collect();
        assert_eq!(placed.len(), 3);
        let mut firsts: Vec<u16> = (0..3).map(|_| shards.round().next().unwrap()).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![0, 1, 2]);
    }
}
