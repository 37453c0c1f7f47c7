//! What `hash_bound` costs and buys: a simulation of a `hash` group with the
//! real selector and the real call counters (`bench/hash-bound.sh` runs it).
//!
//! 10,000 subscribers call with Zipf-skewed rates (subscriber k calls in
//! proportion to 1/k), Poisson arrivals, exponential call lengths, over 4
//! destinations of equal weight. For each bound (none, then the ones given)
//! it prints:
//! - the share of calls that left their first choice in HRW order (what a
//!   registrar backend pays for: with any-node lookup the spill target still
//!   finds the binding, at the cost of a Redis read);
//! - the peak-to-mean load: the busiest destination's calls over the mean,
//!   averaged over the run's samples, and its worst sample.
//!
//! Usage: hash_bound [calls_per_sec] [mean_call_secs] [sim_secs] [bound...]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use siphon::gateway::algorithm::HashSelector;
use siphon::gateway::{Destination, Selector};

const SUBSCRIBERS: usize = 10_000;
const DESTINATIONS: usize = 4;

struct Figures {
    calls: u64,
    moved: u64,
    mean_peak_to_mean: f64,
    worst_peak_to_mean: f64,
}

fn simulate(bound: Option<f64>, rate: f64, mean_secs: f64, sim_secs: f64) -> Figures {
    let group: Vec<Destination> = (0..DESTINATIONS)
        .map(|i| {
            let address = SocketAddr::from(([192, 0, 2, 10 + i as u8], 5060));
            Destination::new(format!("sip:backend{}.example.com", i + 1), address)
        })
        .collect();
    let eligible: Vec<usize> = (0..DESTINATIONS).collect();
    let mut plain = HashSelector::default();
    let mut bounded = HashSelector::bounded(bound);
    plain.prepare(&group);
    bounded.prepare(&group);
    // Zipf(1) over the subscribers, as a cumulative table.
    let mut cumulative = Vec::with_capacity(SUBSCRIBERS);
    let mut total = 0.0;
    for k in 1..=SUBSCRIBERS {
        total += 1.0 / k as f64;
        cumulative.push(total);
    }
    let keys: Vec<String> = (0..SUBSCRIBERS)
        .map(|k| format!("sip:user{k}@example.com"))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261207);
    let epoch = Instant::now();
    let mut ends: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut held = std::collections::HashMap::new();
    let (mut now, mut next_sample, mut serial) = (0.0f64, 1.0f64, 0u64);
    let (mut calls, mut moved, mut samples) = (0u64, 0u64, 0u64);
    let (mut sum_ratio, mut worst) = (0.0f64, 0.0f64);
    let warmup = mean_secs * 3.0;
    while now < sim_secs {
        now += -(1.0 - rng.random::<f64>()).ln() / rate;
        let at = epoch + Duration::from_secs_f64(now);
        let now_nanos = (now * 1e9) as u64;
        while let Some(Reverse((end, id))) = ends.peek().copied() {
            if end > now_nanos {
                break;
            }
            ends.pop();
            held.remove(&id);
        }
        if now >= next_sample {
            next_sample += 1.0;
            let loads: Vec<f64> = group
                .iter()
                .map(|d| f64::from(d.capacity().calls_in_use()))
                .collect();
            let mean = loads.iter().sum::<f64>() / loads.len() as f64;
            if now > warmup && mean > 0.0 {
                let ratio = loads.iter().cloned().fold(0.0, f64::max) / mean;
                sum_ratio += ratio;
                worst = worst.max(ratio);
                samples += 1;
            }
        }
        let draw = rng.random::<f64>() * total;
        let k = cumulative
            .partition_point(|&c| c < draw)
            .min(SUBSCRIBERS - 1);
        let key = keys[k].as_bytes();
        let first = plain.pick(&group, &eligible, Some(key)).expect("one");
        let chosen = bounded.pick(&group, &eligible, Some(key)).expect("one");
        let reservation = group[chosen].capacity().reserve(at).expect("no limit");
        let length = -(1.0 - rng.random::<f64>()).ln() * mean_secs;
        serial += 1;
        ends.push(Reverse((now_nanos + (length * 1e9) as u64, serial)));
        held.insert(serial, reservation);
        if now > warmup {
            calls += 1;
            moved += u64::from(chosen != first);
        }
    }
    Figures {
        calls,
        moved,
        mean_peak_to_mean: sum_ratio / samples.max(1) as f64,
        worst_peak_to_mean: worst,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (rate, mean_secs, sim_secs) = (number(0, 100.0), number(1, 60.0), number(2, 3600.0));
    let mut bounds: Vec<Option<f64>> = vec![None];
    bounds.extend(args.iter().skip(3).filter_map(|a| a.parse().ok()).map(Some));
    if bounds.len() == 1 {
        bounds.extend([Some(1.1), Some(1.25), Some(1.5)]);
    }
    println!(
        "{SUBSCRIBERS} subscribers, Zipf(1) call rates, {DESTINATIONS} equal destinations; \
         {rate} calls/s, {mean_secs} s mean call, {sim_secs} s simulated"
    );
    println!(
        "| hash_bound | calls | left their first choice | peak/mean (mean) | peak/mean (worst) |"
    );
    println!("|---|---|---|---|---|");
    for bound in bounds {
        let figures = simulate(bound, rate, mean_secs, sim_secs);
        let name = bound.map_or("none".to_string(), |b| b.to_string());
        println!(
            "| {name} | {} | {:.2}% | {:.3} | {:.3} |",
            figures.calls,
            100.0 * figures.moved as f64 / figures.calls.max(1) as f64,
            figures.mean_peak_to_mean,
            figures.worst_peak_to_mean,
        );
    }
}
