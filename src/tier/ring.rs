//! Consistent hashing (ketama-style) of keys onto the nodes of one zone.
//!
//! Each node is placed on a 64-bit ring at `POINTS` pseudo-random positions (virtual
//! nodes) derived from its name; a key belongs to the first point at or after the
//! key's hash, wrapping around. Adding or removing one of N nodes therefore moves
//! about 1/N of the keys, and the many points per node keep the shares even.

/// Virtual nodes per physical node.
pub const POINTS: usize = 160;

/// 64-bit FNV-1a followed by a splitmix finalizer: fast, and well spread for short keys.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The ring of one zone.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, node index), sorted by point.
    points: Vec<(u64, usize)>,
    nodes: usize,
}

impl Ring {
    /// A ring over nodes named `names` (their URLs): the same names give the same ring
    /// on every node of the fleet.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Ring {
        let mut points = Vec::with_capacity(names.len() * POINTS);
        for (i, name) in names.iter().enumerate() {
            for p in 0..POINTS {
                points.push((hash64(format!("{}#{p}", name.as_ref()).as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            nodes: names.len(),
        }
    }

    /// The node index that owns `key`.
    #[inline]
    pub fn node_for(&self, key: &[u8]) -> usize {
        if self.nodes <= 1 {
            return 0;
        }
        let h = hash64(key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points[if i == self.points.len() { 0 } else { i }].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("redis://10.0.0.{i}:6379")).collect()
    }

    #[test]
    fn keys_spread_evenly() {
        let ring = Ring::new(&names(4));
        let mut counts = [0u32; 4];
        for k in 0..100_000u32 {
            counts[ring.node_for(format!("readtier:h:{k}").as_bytes())] += 1;
        }
        for c in counts {
            // Each of 4 nodes holds 25% ± 5 points.
            assert!((20_000..30_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn adding_or_removing_a_node_moves_about_one_nth_of_the_keys() {
        let keys: Vec<String> = (0..100_000u32).map(|k| format!("readtier:h:{k}")).collect();
        let four = Ring::new(&names(4));
        let five = Ring::new(&names(5));
        let three = Ring::new(&names(3));
        let moved_add = keys
            .iter()
            .filter(|k| four.node_for(k.as_bytes()) != five.node_for(k.as_bytes()))
            .count();
        // Ideal: 1/5 of the keys move, all of them to the new node.
        assert!(
            (15_000..25_000).contains(&moved_add),
            "adding moved {moved_add}"
        );
        for k in &keys {
            let (a, b) = (four.node_for(k.as_bytes()), five.node_for(k.as_bytes()));
            assert!(a == b || b == 4, "a key moved between old nodes");
        }
        let moved_remove = keys
            .iter()
            .filter(|k| four.node_for(k.as_bytes()) != three.node_for(k.as_bytes()))
            .count();
        // Ideal: the removed node's quarter moves, nothing else.
        assert!(
            (20_000..30_000).contains(&moved_remove),
            "removing moved {moved_remove}"
        );
        for k in &keys {
            let (a, b) = (four.node_for(k.as_bytes()), three.node_for(k.as_bytes()));
            assert!(a == b || a == 3, "a key on a surviving node moved");
        }
    }

    #[test]
    fn one_node_owns_everything() {
        let ring = Ring::new(&names(1));
        assert_eq!(ring.node_for(b"x"), 0);
    }
}
