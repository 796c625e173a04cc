//! The keys each queue script receives (SPEC section 12: every script gets every key it
//! touches in `KEYS`), in the order `ready.lua`'s `layout()` reads them: the shard's fixed
//! keys, then four per kind (its pending list, wake list, ring of owners and owners' turns).
//!
//! A script that may move a job of any kind (a due retry, an expired lease, a dead job
//! retried) gets the keys of every kind the process knows of in the queue: the registry's,
//! the ones it pushed or claimed, and the ones Redis lists in the shard's `kinds` set
//! (`push.lua` adds to it). When `fetch.lua` meets a job of a kind it was not given, it
//! leaves the job where it is and says so, and the store learns the shard's kinds before
//! its next claim.

use std::collections::{BTreeSet, HashMap};
use std::sync::{PoisonError, RwLock};

use super::{QueueStore, kinds_of};
use crate::jobs::Queue;

/// The shard's keys every layout starts with, as `ready.lua` names them.
const FIXED: [&str; 10] = [
    "jobs",
    "running",
    "scheduled",
    "done",
    "dead",
    "cancelled",
    "controls",
    "active",
    "failed",
    "kinds",
];

/// The kinds of each queue a process knows of, beyond its registry's.
#[derive(Default)]
pub(super) struct KnownKinds(RwLock<HashMap<Queue, BTreeSet<String>>>);

impl QueueStore {
    /// The keys of a script in one shard that may move jobs of `kinds` (each once, in order).
    pub(super) fn layout<'a>(
        &self,
        queue: Queue,
        shard: u16,
        kinds: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Vec<String> {
        self.learn(queue, kinds.clone().into_iter());
        self.keys_for(queue, shard, kinds)
    }

    /// The layout of `kinds` (each once, in order), learning nothing.
    fn keys_for<'a>(
        &self,
        queue: Queue,
        shard: u16,
        kinds: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let ns = self.shards.ns(queue, shard);
        let mut keys: Vec<String> = FIXED.iter().map(|name| format!("{ns}{name}")).collect();
        let mut seen: Vec<&str> = Vec::new();
        for kind in kinds {
            if seen.contains(&kind) {
                continue;
            }
            seen.push(kind);
            for block in ["pending", "wake", "owners", "fair"] {
                keys.push(format!("{ns}{block}:{kind}"));
            }
        }
        keys
    }

    /// Every kind of `queue` this process knows of, with `more`.
    pub(super) fn known_kinds(&self, queue: Queue, more: &[&str]) -> Vec<String> {
        let known = self.kinds.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut kinds: BTreeSet<String> = kinds_of(queue).map(str::to_owned).collect();
        kinds.extend(known.get(&queue).into_iter().flatten().cloned());
        kinds.extend(more.iter().map(|kind| (*kind).to_owned()));
        kinds.into_iter().collect()
    }

    /// The layout of a script in one shard that may move a job of any kind known.
    pub(super) fn full_layout(&self, queue: Queue, shard: u16, more: &[&str]) -> Vec<String> {
        // Only `more` can be new: the rest were learnt already.
        self.learn(queue, more.iter().copied());
        let kinds = self.known_kinds(queue, more);
        self.keys_for(queue, shard, kinds.iter().map(String::as_str))
    }

    /// Learns the kinds Redis has seen pushed to one shard of `queue`.
    pub(super) async fn learn_kinds(&self, queue: Queue, shard: u16) -> redis::RedisResult<()> {
        let kinds: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key_in(queue, shard, "kinds"))
            .query_async(&mut self.connection())
            .await?;
        self.learn(queue, kinds.iter().map(String::as_str));
        Ok(())
    }

    fn learn<'a>(&self, queue: Queue, kinds: impl Iterator<Item = &'a str>) {
        let fresh: Vec<&str> = {
            let known = self.kinds.0.read().unwrap_or_else(PoisonError::into_inner);
            let mine = known.get(&queue);
            kinds.filter(|kind| !mine.is_some_and(|set| set.contains(*kind))).collect()
        };
        if !fresh.is_empty() {
            let mut known = self.kinds.0.write().unwrap_or_else(PoisonError::into_inner);
            known.entry(queue).or_default().extend(fresh.into_iter().map(str::to_owned));
        }
    }
}
