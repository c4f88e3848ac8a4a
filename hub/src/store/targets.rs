//! In-memory indexes over the applications and clusters trees that answer
//! "which applications target this cluster" and "which clusters does this
//! destination name" without decoding every record, and counters of what
//! the store read, so tests can hold the hub's work proportional to a
//! change.
//!
//! Built from the trees on first use, then kept up to date by the store's
//! own writes (nothing else writes those trees).

use std::collections::{BTreeSet, HashMap};

/// An application's `destination`: a cluster name, else a server URL
/// (empty when not set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub server: String,
}

impl Destination {
    /// The destination of `app`.
    pub fn of(app: &crate::model::Application) -> Self {
        Self {
            name: app.spec.destination.name.clone().unwrap_or_default(),
            server: app.spec.destination.server.clone().unwrap_or_default(),
        }
    }

    /// Whether it names the cluster `name` with server URL `server`: by
    /// name when it has one, else by a non-empty server URL (the rule of
    /// `fleet::targets`).
    pub fn targets(&self, name: &str, server: &str) -> bool {
        if !self.name.is_empty() {
            self.name == name
        } else {
            !self.server.is_empty() && self.server == server
        }
    }
}

/// What a cluster contributes to targeting and generators: the fields an
/// ApplicationSet `clusters` generator or a destination reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ClusterFacts {
    pub server: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub project: String,
}

impl ClusterFacts {
    pub(super) fn of(c: &super::ClusterRecord) -> Self {
        Self {
            server: c.server.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            project: c.project.clone(),
        }
    }
}

/// Applications by destination, clusters by server URL.
#[derive(Debug, Default)]
pub(super) struct Targets {
    apps: HashMap<String, Destination>,
    /// Destination name → applications naming it.
    by_name: HashMap<String, BTreeSet<String>>,
    /// Destination server (of applications without a destination name) →
    /// applications naming it.
    by_server: HashMap<String, BTreeSet<String>>,
    clusters: HashMap<String, ClusterFacts>,
    /// Server URL → clusters with it.
    clusters_by_server: HashMap<String, BTreeSet<String>>,
    /// Bumped whenever a cluster is added, removed or changes a field in
    /// [`ClusterFacts`] (not on heartbeats or generations).
    pub inventory_generation: u64,
    /// Applications added, removed or given another destination since the
    /// last [`Targets::take_moved`].
    moved: BTreeSet<String>,
}

impl Targets {
    pub(super) fn put_app(&mut self, name: &str, dest: Destination) {
        if self.apps.get(name) == Some(&dest) {
            return;
        }
        self.remove_app(name);
        if !dest.name.is_empty() {
            self.by_name
                .entry(dest.name.clone())
                .or_default()
                .insert(name.to_owned());
        } else if !dest.server.is_empty() {
            self.by_server
                .entry(dest.server.clone())
                .or_default()
                .insert(name.to_owned());
        }
        self.apps.insert(name.to_owned(), dest);
    }

    pub(super) fn remove_app(&mut self, name: &str) {
        self.moved.insert(name.to_owned());
        let Some(old) = self.apps.remove(name) else {
            return;
        };
        for (map, key) in [
            (&mut self.by_name, &old.name),
            (&mut self.by_server, &old.server),
        ] {
            if let Some(set) = map.get_mut(key) {
                set.remove(name);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
    }

    pub(super) fn put_cluster(&mut self, name: &str, facts: ClusterFacts) {
        if self.clusters.get(name) == Some(&facts) {
            return;
        }
        self.unlink_cluster(name);
        if !facts.server.is_empty() {
            self.clusters_by_server
                .entry(facts.server.clone())
                .or_default()
                .insert(name.to_owned());
        }
        self.clusters.insert(name.to_owned(), facts);
        self.inventory_generation += 1;
    }

    pub(super) fn remove_cluster(&mut self, name: &str) {
        if self.unlink_cluster(name) {
            self.inventory_generation += 1;
        }
    }

    /// Drops a cluster from the maps; returns whether it was there.
    fn unlink_cluster(&mut self, name: &str) -> bool {
        let Some(old) = self.clusters.remove(name) else {
            return false;
        };
        if let Some(set) = self.clusters_by_server.get_mut(&old.server) {
            set.remove(name);
            if set.is_empty() {
                self.clusters_by_server.remove(&old.server);
            }
        }
        true
    }

    /// The applications added, removed or moved since the last call.
    pub(super) fn take_moved(&mut self) -> Vec<String> {
        std::mem::take(&mut self.moved).into_iter().collect()
    }

    pub(super) fn has_app(&self, name: &str) -> bool {
        self.apps.contains_key(name)
    }

    pub(super) fn destination(&self, app: &str) -> Option<&Destination> {
        self.apps.get(app)
    }

    /// Applications targeting the cluster `name`, with their destination.
    pub(super) fn apps_targeting(&self, name: &str) -> Vec<(String, Destination)> {
        let server = self
            .clusters
            .get(name)
            .map(|c| c.server.as_str())
            .unwrap_or_default();
        let by_name = self.by_name.get(name).into_iter().flatten();
        let by_server = (!server.is_empty())
            .then(|| self.by_server.get(server))
            .flatten()
            .into_iter()
            .flatten();
        by_name
            .chain(by_server)
            .filter_map(|a| self.apps.get(a).map(|d| (a.clone(), d.clone())))
            .filter(|(_, d)| d.targets(name, server))
            .collect()
    }

    /// Clusters `dest` targets.
    pub(super) fn clusters_targeted(&self, dest: &Destination) -> Vec<String> {
        if !dest.name.is_empty() {
            return self
                .clusters
                .contains_key(&dest.name)
                .then(|| dest.name.clone())
                .into_iter()
                .collect();
        }
        if dest.server.is_empty() {
            return Vec::new();
        }
        self.clusters_by_server
            .get(&dest.server)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub(super) fn cluster_names(&self) -> impl Iterator<Item = &String> {
        self.clusters.keys()
    }
}

/// What the store read since it was opened (see
/// [`super::Store::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Calls that read the database (a get, or an iteration of a tree).
    pub reads: u64,
    /// Records decoded from those reads.
    pub decoded: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, server: &str) -> Destination {
        Destination {
            name: name.into(),
            server: server.into(),
        }
    }

    fn facts(server: &str) -> ClusterFacts {
        ClusterFacts {
            server: server.into(),
            ..Default::default()
        }
    }

    #[test]
    fn applications_are_found_by_cluster_name_and_server() {
        let mut t = Targets::default();
        t.put_cluster("a", facts("https://a"));
        t.put_cluster("b", facts(""));
        t.put_app("by-name", d("a", ""));
        t.put_app("by-server", d("", "https://a"));
        t.put_app("name-wins", d("b", "https://a"));
        t.put_app("nowhere", d("", ""));
        let names = |v: Vec<(String, Destination)>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(names(t.apps_targeting("a")), ["by-name", "by-server"]);
        assert_eq!(names(t.apps_targeting("b")), ["name-wins"]);
        assert_eq!(t.clusters_targeted(&d("", "https://a")), ["a"]);
        assert_eq!(t.clusters_targeted(&d("c", "")), Vec::<String>::new());
        // An application moving away leaves the old destination.
        t.put_app("by-name", d("b", ""));
        assert_eq!(names(t.apps_targeting("a")), ["by-server"]);
        t.remove_app("by-server");
        assert!(t.apps_targeting("a").is_empty());
        // What came, went or moved is reported once; a rewrite in place
        // is not.
        let mut moved = t.take_moved();
        moved.sort();
        assert_eq!(moved, ["by-name", "by-server", "name-wins", "nowhere"]);
        t.put_app("by-name", d("b", ""));
        assert!(t.take_moved().is_empty());
    }

    #[test]
    fn the_inventory_generation_moves_only_with_inventory_facts() {
        let mut t = Targets::default();
        t.put_cluster("a", facts("s"));
        let g = t.inventory_generation;
        t.put_cluster("a", facts("s"));
        assert_eq!(t.inventory_generation, g);
        t.put_cluster("a", facts("s2"));
        assert_eq!(t.inventory_generation, g + 1);
        assert_eq!(t.clusters_targeted(&d("", "s")), Vec::<String>::new());
        t.remove_cluster("a");
        assert_eq!(t.inventory_generation, g + 2);
    }
}
