//! A model-based test of the engine core, in the spirit of TigerBeetle's
//! simulator: seeded random interleavings of new messages, retransmissions,
//! conflicting copies, lost acks, Final Accounting, export cuts, storage
//! acks that arrive or are lost, deletes, watchdog ticks and crashes (every
//! in-memory structure dropped, the real RocksDB store reopened from its
//! folder) at any step, checked after every step against a reference model
//! of what must be stored and billed.
//!
//! The committer and the store are the real ones; the storage service is a
//! map from batch id to the rows it holds (its own checks have their tests
//! in tests/tests/export.rs). A failure prints its seed;
//! `ACCT_MODEL_SEED=<seed> cargo test -p acct model` replays it, and
//! `ACCT_MODEL_SEEDS=<n>` runs more seeds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use wire::{
    Accounting, AccountingKind, AckStatus, Address, BatchId, DataFields, MessageId, Name, Policy, ServiceId, SessionId,
    SessionKey, Signed, SigningKey, TimeOfDay, Usage, UserCredential,
};

use super::{Committer, TEST_SETTINGS};
use crate::am::pipeline::{AckSender, Admitted, ProviderConnection, SessionTable, Verified};
use crate::am::session::SessionInfo;
use crate::am::store::{Manifest, Store};

const SESSIONS: usize = 4;
const STEPS: usize = 400;
const SEEDS: u64 = 24;

/// A small deterministic generator (PCG-style LCG, high bits).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the reference model knows of one session.
#[derive(Default)]
struct ModelSession {
    /// Next new sequence.
    next_sequence: u64,
    /// Every message the engine answered STORED, by sequence: its bytes.
    stored: BTreeMap<u64, Signed<Accounting>>,
    /// The provider's view: stored messages whose ack it never saw (it
    /// retransmits them).
    unacked: Vec<u64>,
    /// The sequence of the stored Final Accounting.
    final_sequence: Option<u64>,
    /// Sequences skipped so far, sent later (out of order).
    gaps: Vec<u64>,
}

/// The simulated world: the real engine core and the model.
struct World {
    seed: u64,
    folder: tempfile::TempDir,
    committer: Option<Committer>,
    infos: Vec<Arc<SessionInfo>>,
    connection: Arc<ProviderConnection>,
    provider_key: SigningKey,
    reply: AckSender,
    acks: tokio::sync::mpsc::Receiver<crate::am::pipeline::Answers>,
    model: Vec<ModelSession>,
    /// The storage service: the message ids of every batch it holds.
    cold: HashMap<BatchId, Vec<MessageId>>,
    next_batch: u64,
    now_ms: u64,
    crashes: u64,
    exports: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let folder = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(folder.path()).unwrap());
        let table = Arc::new(SessionTable::default());
        let mut committer = Committer::new(store, table, TEST_SETTINGS).unwrap();
        let now_ms = crate::clock::now_ms();
        let am_key = SigningKey::from_seed(&[1; 32]);
        let infos: Vec<Arc<SessionInfo>> = (0..SESSIONS)
            .map(|index| {
                let credential = Signed::sign(
                    UserCredential {
                        session_id: SessionId([index as u8 + 1; 16]),
                        service_id: ServiceId(1),
                        user_id: Name::new(format!("user-{index}")).unwrap(),
                        user_address: Address::new("10.0.0.1:1").unwrap(),
                        session_key: SessionKey([0; 32]),
                        policy: Policy {
                            valid_from_ms: now_ms - 3_600_000,
                            valid_until_ms: now_ms + 3_600_000,
                            time_of_day: TimeOfDay::ANY,
                            requests_max: 0,
                            address_change_allowed: false,
                            required_data: DataFields::UNITS,
                            interim_interval_max_s: 0,
                        },
                    },
                    &am_key,
                )
                .unwrap();
                SessionInfo::new(Name::new("p1").unwrap(), credential, now_ms)
            })
            .collect();
        for info in &infos {
            let (opened, result) = tokio::sync::oneshot::channel();
            committer.open_sessions(vec![(info.clone(), opened)], now_ms);
            result.blocking_recv().unwrap().unwrap();
        }
        let provider_key = SigningKey::from_seed(&[2; 32]);
        let (reply, acks) = tokio::sync::mpsc::channel(4096);
        Self {
            seed,
            folder,
            committer: Some(committer),
            connection: ProviderConnection::new(Name::new("p1").unwrap(), provider_key.public_key()),
            infos,
            provider_key,
            reply,
            acks,
            model: (0..SESSIONS)
                .map(|_| ModelSession {
                    next_sequence: 1,
                    ..ModelSession::default()
                })
                .collect(),
            cold: HashMap::new(),
            next_batch: 1,
            now_ms,
            crashes: 0,
            exports: 0,
        }
    }

    fn committer(&mut self) -> &mut Committer {
        self.committer.as_mut().expect("committer")
    }

    fn store(&self) -> Arc<Store> {
        self.committer.as_ref().expect("committer").store.clone()
    }

    fn sign(&self, session: usize, sequence: u64, kind: AccountingKind, units: u64) -> Signed<Accounting> {
        Signed::sign(
            Accounting {
                service_id: ServiceId(1),
                kind,
                session_id: self.infos[session].session_id(),
                sequence,
                credential_digest: self.infos[session].credential_digest,
                usage: Usage {
                    units: Some(units),
                    ..Usage::default()
                },
            },
            &self.provider_key,
        )
        .unwrap()
    }

    fn fail(&self, step: usize, what: &str) -> ! {
        panic!(
            "model check failed at step {step} (seed {}; replay with ACCT_MODEL_SEED={}): {what}",
            self.seed, self.seed
        );
    }

    /// One commit group of random messages, answers checked against the model.
    fn send(&mut self, random: &mut Random, step: usize) {
        let count = 1 + random.below(12) as usize;
        // (session, message, what the model expects)
        let mut group: Vec<(usize, Signed<Accounting>, Expect)> = Vec::new();
        let mut new_in_group: HashMap<(usize, u64), Signed<Accounting>> = HashMap::new();
        for _ in 0..count {
            let session = random.below(SESSIONS as u64) as usize;
            let model = &self.model[session];
            let choice = random.below(100);
            if choice < 15 && !model.stored.is_empty() {
                // Retransmit a stored message (an ack lost, or a plain resend).
                let pick = if !model.unacked.is_empty() && random.chance(70) {
                    model.unacked[random.below(model.unacked.len() as u64) as usize]
                } else {
                    *model
                        .stored
                        .keys()
                        .nth(random.below(model.stored.len() as u64) as usize)
                        .unwrap()
                };
                let message = model.stored[&pick].clone();
                group.push((session, message, Expect::Duplicate));
            } else if choice < 22 && !model.stored.is_empty() {
                // The same sequence with other content.
                let pick = *model
                    .stored
                    .keys()
                    .nth(random.below(model.stored.len() as u64) as usize)
                    .unwrap();
                let original = &model.stored[&pick];
                let kind = original.value().kind;
                let units = original.value().usage.units.unwrap_or(0) + 1 + random.below(5);
                group.push((session, self.sign(session, pick, kind, units), Expect::Conflict));
            } else if choice < 27 && !new_in_group.is_empty() {
                // A copy of a message new in this very group.
                let (&(copy_session, _), message) = new_in_group.iter().next().unwrap();
                group.push((copy_session, message.clone(), Expect::Duplicate));
            } else if choice < 35 && !self.model[session].gaps.is_empty() {
                // A message that arrives after later ones (a gap below the
                // highest stored sequence, maybe far below).
                let gaps = &mut self.model[session].gaps;
                let sequence = gaps.swap_remove(random.below(gaps.len() as u64) as usize);
                let final_sequence = self.model[session].final_sequence.or_else(|| {
                    new_in_group
                        .iter()
                        .find(|((s, _), m)| *s == session && m.value().kind == AccountingKind::FINAL)
                        .map(|((_, sequence), _)| *sequence)
                });
                let message = self.sign(session, sequence, AccountingKind::INTERIM, 1 + random.below(1000));
                let expect = if final_sequence.is_some_and(|last| sequence > last) {
                    Expect::Closed
                } else {
                    new_in_group.insert((session, sequence), message.clone());
                    Expect::Stored
                };
                group.push((session, message, expect));
            } else {
                if random.chance(10) {
                    // Skip a few sequences (sent later, out of order); some
                    // far beyond the in-memory window of 64.
                    let skip = if random.chance(20) { 70 } else { 1 + random.below(3) };
                    let model = &mut self.model[session];
                    model.gaps.extend(model.next_sequence..model.next_sequence + skip);
                    model.next_sequence += skip;
                }
                let sequence = self.model[session].next_sequence;
                self.model[session].next_sequence += 1;
                let closed = self.model[session].final_sequence.is_some()
                    || new_in_group
                        .iter()
                        .any(|((s, _), m)| *s == session && m.value().kind == AccountingKind::FINAL);
                let kind = if random.chance(4) {
                    AccountingKind::FINAL
                } else {
                    AccountingKind::INTERIM
                };
                let message = self.sign(session, sequence, kind, 1 + random.below(1000));
                let expect = if closed { Expect::Closed } else { Expect::Stored };
                if expect == Expect::Stored {
                    new_in_group.insert((session, sequence), message.clone());
                }
                group.push((session, message, expect));
            }
        }
        let records = group
            .iter()
            .map(|(_, message, _)| {
                Verified::new(Admitted {
                    message: message.clone(),
                    connection: self.connection.clone(),
                    received_ms: self.now_ms,
                    reply: self.reply.clone(),
                })
            })
            .collect();
        let now = self.now_ms;
        self.committer().commit_records(vec![records], now);
        // Answers come in group order.
        let mut answers = Vec::new();
        while let Ok(sent) = self.acks.try_recv() {
            sent.append_to(&mut answers);
        }
        if answers.len() != group.len() {
            self.fail(step, &format!("{} answers for {} messages", answers.len(), group.len()));
        }
        for ((session, message, expect), answer) in group.into_iter().zip(answers) {
            let sequence = message.value().sequence;
            let ok = match expect {
                Expect::Stored => answer.status == AckStatus::STORED,
                Expect::Duplicate => answer.status == AckStatus::DUPLICATE,
                Expect::Conflict => answer.status == AckStatus::CONFLICTING_DUPLICATE,
                Expect::Closed => answer.status == AckStatus::SESSION_CLOSED,
            };
            if !ok {
                self.fail(
                    step,
                    &format!(
                        "session {session} sequence {sequence}: expected {expect:?}, answered {:?}",
                        answer.status
                    ),
                );
            }
            if answer.status == AckStatus::STORED {
                let model = &mut self.model[session];
                model.stored.insert(sequence, message.clone());
                if message.value().kind == AccountingKind::FINAL {
                    model.final_sequence = Some(sequence);
                }
                // Lost acks: the provider will retransmit.
                if random.chance(10) {
                    model.unacked.push(sequence);
                }
            } else if answer.status == AckStatus::DUPLICATE {
                self.model[session].unacked.retain(|s| *s != sequence);
            }
        }
    }

    /// Cut an export batch (as the exporter does).
    fn cut(&mut self, random: &mut Random) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_batch.to_be_bytes());
        let batch_id = BatchId(id);
        let records_max = 1 + random.below(40) as usize;
        if self
            .store()
            .cut_batch(records_max, 32 << 20, batch_id, self.now_ms)
            .unwrap()
            .is_some()
        {
            self.next_batch += 1;
        }
    }

    /// The storage receives the oldest pending batch (as after a restart,
    /// the exporter resends manifests in order); its ack may be lost.
    fn deliver(&mut self, random: &mut Random, step: usize) {
        let store = self.store();
        let Some(manifest) = store.manifests().unwrap().into_iter().next() else {
            return;
        };
        let records = store.batch_records(&manifest).unwrap();
        let ids: Vec<MessageId> = records
            .iter()
            .map(|(_, record)| record.accounting().unwrap().value().message_id())
            .collect();
        match self.cold.get(&manifest.batch_id) {
            // A resend of a stored batch must carry the same rows.
            Some(stored) if *stored != ids => self.fail(step, "a resent batch differs from the stored one"),
            Some(_) => {}
            None => {
                self.cold.insert(manifest.batch_id, ids);
                self.exports += 1;
            }
        }
        if random.chance(80) {
            delete(&store, &manifest);
        }
    }

    /// Crash: every in-memory structure is gone; reopen from the folder.
    fn crash(&mut self, step: usize) {
        let ids: Vec<SessionId> = self.infos.iter().map(|info| info.session_id()).collect();
        let before: Vec<_> = ids.iter().map(|id| self.committer().progress_of(*id)).collect();
        self.committer = None;
        // Acks in flight die with the process.
        while self.acks.try_recv().is_ok() {}
        let store = Arc::new(Store::open(self.folder.path()).unwrap());
        let table = Arc::new(SessionTable::default());
        self.committer = Some(Committer::new(store, table, TEST_SETTINGS).unwrap());
        self.crashes += 1;
        // Every session's dedup state and counters come back exactly, whether
        // they were written to `progress` or rode in markers.
        for (index, (id, before)) in ids.into_iter().zip(before).enumerate() {
            let after = self.committer().progress_of(id);
            if after != before {
                self.fail(
                    step,
                    &format!("session {index}: progress {before:?} before the crash, {after:?} after"),
                );
            }
            if let Some(after) = after
                && after.message_count != self.model[index].stored.len() as u64
            {
                self.fail(
                    step,
                    &format!(
                        "session {index}: {} messages counted, {} stored",
                        after.message_count,
                        self.model[index].stored.len()
                    ),
                );
            }
        }
    }

    /// The invariants, against the real store and the storage's files.
    fn check(&self, step: usize) {
        let store = self.store();
        let manifests = store.manifests().unwrap();
        let pending: HashSet<BatchId> = manifests.iter().map(|manifest| manifest.batch_id).collect();
        let hot: Vec<(u64, MessageId)> = store
            .records(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(sequence, record)| (sequence, record.accounting().unwrap().value().message_id()))
            .collect();
        // Cold rows, and which batch holds each.
        let mut cold_rows: HashMap<MessageId, BatchId> = HashMap::new();
        for (batch_id, ids) in &self.cold {
            for id in ids {
                if let Some(other) = cold_rows.insert(*id, *batch_id) {
                    self.fail(step, &format!("{id:?} is in cold batches {other:?} and {batch_id:?}"));
                }
            }
        }
        let mut billed: HashSet<MessageId> = HashSet::new();
        for (_, id) in &hot {
            if !billed.insert(*id) {
                self.fail(step, &format!("{id:?} is twice in the hot store"));
            }
            // In both places only while its batch awaits the delete.
            if let Some(batch_id) = cold_rows.get(id)
                && !pending.contains(batch_id)
            {
                self.fail(
                    step,
                    &format!("{id:?} is in cold storage and still hot after its delete"),
                );
            }
        }
        billed.extend(cold_rows.keys().copied());
        // Exactly what the engine answered STORED, nothing else.
        let expected: HashSet<MessageId> = self
            .model
            .iter()
            .flat_map(|session| session.stored.values().map(|message| message.value().message_id()))
            .collect();
        if billed != expected {
            let lost = expected.difference(&billed).count();
            let extra = billed.difference(&expected).count();
            self.fail(
                step,
                &format!("{lost} stored messages missing, {extra} never acked present"),
            );
        }
        // The billed total per session equals the model's.
        let mut units: HashMap<SessionId, u64> = HashMap::new();
        let by_id: HashMap<MessageId, &Signed<Accounting>> = self
            .model
            .iter()
            .flat_map(|session| session.stored.values())
            .map(|message| (message.value().message_id(), message))
            .collect();
        for id in &billed {
            let message = by_id[id].value();
            *units.entry(message.session_id).or_default() += message.usage.units.unwrap_or(0);
        }
        for (index, session) in self.model.iter().enumerate() {
            let want: u64 = session
                .stored
                .values()
                .map(|message| message.value().usage.units.unwrap_or(0))
                .sum();
            let got = units.get(&self.infos[index].session_id()).copied().unwrap_or(0);
            if want != got {
                self.fail(step, &format!("session {index} billed {got} units, model says {want}"));
            }
        }
        // Batches never overlap and the cursor is past every batch.
        let cursor = store.export_cursor().unwrap();
        for pair in manifests.windows(2) {
            if pair[0].last >= pair[1].first {
                self.fail(step, "two pending batches overlap");
            }
        }
        if manifests.last().is_some_and(|manifest| manifest.last >= cursor) {
            self.fail(step, "the export cursor is behind a pending batch");
        }
    }
}

fn delete(store: &Store, manifest: &Manifest) {
    store.delete_batch(manifest, None).unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Stored,
    Duplicate,
    Conflict,
    Closed,
}

fn run(seed: u64) -> (u64, u64, usize) {
    let mut random = Random(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut world = World::new(seed);
    for step in 0..STEPS {
        match random.below(100) {
            0..=59 => world.send(&mut random, step),
            60..=71 => world.cut(&mut random),
            72..=85 => world.deliver(&mut random, step),
            86..=89 => {
                let now = world.now_ms;
                world.committer().tick(now);
            }
            _ => world.crash(step),
        }
        world.check(step);
    }
    // Drain: deliver and delete everything; the hot store empties and every
    // stored message is billed once from cold storage alone.
    for _ in 0..10_000 {
        world.cut(&mut random);
        let store = world.store();
        let Some(manifest) = store.manifests().unwrap().into_iter().next() else {
            break;
        };
        world.deliver(&mut random, STEPS);
        delete(&store, &manifest);
    }
    world.check(STEPS);
    let store = world.store();
    assert_eq!(
        store.record_count().unwrap(),
        0,
        "seed {seed}: the hot store did not drain"
    );
    let stored: usize = world.model.iter().map(|session| session.stored.len()).sum();
    (world.crashes, world.exports, stored)
}

#[test]
fn engine_core_matches_the_reference_model() {
    let seeds: Vec<u64> = match std::env::var("ACCT_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("ACCT_MODEL_SEED is a number")],
        Err(_) => {
            let count = std::env::var("ACCT_MODEL_SEEDS")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(SEEDS);
            (1..=count).collect()
        }
    };
    let (mut crashes, mut exports, mut stored) = (0, 0, 0);
    for seed in &seeds {
        let (c, e, s) = run(*seed);
        crashes += c;
        exports += e;
        stored += s;
    }
    println!(
        "{} seeds x {STEPS} steps: {stored} messages stored, {exports} batches exported, {crashes} crashes",
        seeds.len()
    );
    assert!(
        crashes > 0 && exports > 0 && stored > 0,
        "the simulation exercised nothing"
    );
}
