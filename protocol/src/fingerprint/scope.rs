//! What an upgrade touches, and the clusters it is staged over (ImageElves' per-upgrade
//! clusters). A vendor may sign a [`Scope`] with a release's policy: the classes and
//! paths of the environment the upgrade can meet. Machines are then grouped by the
//! projection of their fingerprints onto the scope, so an upgrade of PHP's MySQL driver
//! does not test separately on machines that differ only in MySQL's buffer sizes.
//! Machines of one full cluster always share their projected cluster: a projection
//! only ever merges clusters, never splits them.
//!
//! A node keeps a membership of its own for every scope its profile declares (under
//! [`membership_name`], with the projected fingerprint [`Fingerprint::scoped`]), from
//! start, not from the release: only members seen before a release may represent their
//! cluster, so a scoped cluster's roster must exist before the release that uses it.

use super::{ClusterKey, Fingerprint, ResourceClass};
use crate::manifest::validate_app_name;
use crate::Digest;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Most path globs a scope may name, and their longest.
pub const MAX_SCOPE_PATHS: usize = 64;
const MAX_SCOPE_PATH_LEN: usize = 512;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Resource classes the upgrade touches; empty for every class.
    pub classes: Vec<ResourceClass>,
    /// Absolute path globs it touches (`*` within a component, `**` across); empty for
    /// every path. Items without a path (environment variables) are kept by class.
    pub paths: Vec<String>,
}

/// A scope ready to test items against.
pub struct ScopeMatcher {
    classes: Vec<ResourceClass>,
    paths: Option<GlobSet>,
}

impl Scope {
    pub fn validate(&self) -> Result<(), String> {
        self.matcher().map(|_| ())
    }

    pub fn matcher(&self) -> Result<ScopeMatcher, String> {
        if self.paths.len() > MAX_SCOPE_PATHS {
            return Err(format!("scope names {} paths, at most {MAX_SCOPE_PATHS}", self.paths.len()));
        }
        let paths = if self.paths.is_empty() {
            None
        } else {
            let mut b = GlobSetBuilder::new();
            for p in &self.paths {
                if !p.starts_with('/') || p.len() > MAX_SCOPE_PATH_LEN {
                    return Err(format!("scope path `{p}` must be absolute and at most {MAX_SCOPE_PATH_LEN} bytes"));
                }
                let glob = GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("scope path `{p}`: {e}"))?;
                b.add(glob);
            }
            Some(b.build().map_err(|e| e.to_string())?)
        };
        Ok(ScopeMatcher { classes: self.classes.clone(), paths })
    }

    pub fn id(&self) -> Digest {
        Digest::of(&crate::wire::encode(self).unwrap_or_default())
    }
}

/// Between an app's name and a scope's id in a scoped membership's name: a character no
/// app name has, so a scoped membership never shares topics or records with an app.
const SCOPE_INFIX: &str = ".scope-";
/// Hex digits of the scope's id in the name: 64 bits, against collisions among the few
/// scopes of one app.
const SCOPE_ID_HEX: usize = 16;

/// The name a node's membership for `scope` of `app` goes by: in its fingerprint, its
/// topics, its roster and its stored sightings.
pub fn membership_name(app: &str, scope: &Scope) -> String {
    format!("{app}{SCOPE_INFIX}{}", &scope.id().to_hex()[..SCOPE_ID_HEX])
}

/// The app a membership name belongs to: the name itself, or the app of a scoped name.
pub fn app_of_membership(name: &str) -> &str {
    name.split_once(SCOPE_INFIX).map_or(name, |(app, _)| app)
}

/// Membership names are an app's name, or an app's name with a scope's id.
pub fn validate_membership_name(name: &str) -> Result<(), String> {
    match name.split_once(SCOPE_INFIX) {
        None => validate_app_name(name),
        Some((app, id)) => {
            validate_app_name(app)?;
            if id.len() == SCOPE_ID_HEX && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                Ok(())
            } else {
                Err(format!("membership name `{name}`: a scope's id is {SCOPE_ID_HEX} lowercase hex digits"))
            }
        }
    }
}

impl ScopeMatcher {
    pub fn keeps(&self, item: &super::Item) -> bool {
        let class = self.classes.is_empty() || self.classes.contains(&item.class);
        let path = item.path.is_empty() || self.paths.as_ref().is_none_or(|g| g.is_match(&item.path));
        class && path
    }
}

impl Fingerprint {
    /// The fingerprint with only the items `scope` keeps.
    pub fn project(&self, scope: &ScopeMatcher) -> Fingerprint {
        let items = self.items().iter().filter(|i| scope.keeps(i)).cloned().collect();
        Fingerprint::new(self.app().to_string(), self.profile_id(), items)
    }

    /// What this machine's membership for `scope` announces: the projection, under the
    /// scope's [`membership_name`]. Its cluster key is the projected cluster's.
    pub fn scoped(&self, scope: &Scope) -> Result<Fingerprint, String> {
        let projected = self.project(&scope.matcher()?);
        Ok(Fingerprint::new(membership_name(self.app(), scope), self.profile_id(), projected.items().to_vec()))
    }

    /// The cluster this machine is staged in for a release of `scope` (its full
    /// cluster when the release names none). The scope's id is in the projected
    /// fingerprint's name, so projected keys never collide with full ones or with
    /// another scope's.
    pub fn cluster_key_for(&self, scope: Option<&Scope>) -> Result<ClusterKey, String> {
        match scope {
            None => Ok(self.cluster_key()),
            Some(scope) => Ok(self.scoped(scope)?.cluster_key()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{Item, ItemValue};
    use proptest::prelude::*;

    fn item(class: ResourceClass, path: &str, key: &str, value: &str) -> Item {
        Item { class, path: path.into(), key: key.into(), value: ItemValue::Text(value.into()) }
    }

    fn machine(php_driver: &str, buffer_pool: &str) -> Fingerprint {
        Fingerprint::new(
            "web".into(),
            Digest([1; 32]),
            vec![
                item(ResourceClass::Library, "/usr/lib/php/20220829/mysqli.so", "", php_driver),
                item(ResourceClass::Config, "/etc/mysql/my.cnf", "mysqld.innodb-buffer-pool-size", buffer_pool),
                item(ResourceClass::Env, "", "TZ", "UTC"),
            ],
        )
    }

    fn php_scope() -> Scope {
        Scope { classes: vec![], paths: vec!["/usr/lib/php/**".into()] }
    }

    #[test]
    fn an_upgrade_of_the_php_driver_does_not_split_machines_over_mysql_tuning() {
        let (a, b, c) = (machine("8.2.36", "1G"), machine("8.2.36", "4G"), machine("8.2.32", "1G"));
        assert_ne!(a.cluster_key(), b.cluster_key());
        let key = |f: &Fingerprint| f.cluster_key_for(Some(&php_scope())).unwrap();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert_ne!(key(&a), a.cluster_key(), "projected keys are derived apart");
        assert_eq!(a.cluster_key_for(None).unwrap(), a.cluster_key());
        // Another scope over the same items is another cluster.
        let wider = Scope { classes: vec![], paths: vec!["/usr/lib/**".into()] };
        assert_ne!(key(&a), a.cluster_key_for(Some(&wider)).unwrap());
    }

    #[test]
    fn a_scoped_membership_is_named_apart_from_every_app() {
        let name = membership_name("web", &php_scope());
        assert!(validate_membership_name(&name).is_ok());
        assert!(crate::manifest::validate_app_name(&name).is_err(), "no app can take a scoped name");
        assert_eq!(app_of_membership(&name), "web");
        assert_eq!(app_of_membership("web"), "web");
        assert!(validate_membership_name("web").is_ok());
        for bad in ["web.scope-", "web.scope-0123", "web.scope-0123456789ABCDEF", "Web.scope-0123456789abcdef"] {
            assert!(validate_membership_name(bad).is_err(), "{bad}");
        }
        let scoped = machine("8.2.36", "1G").scoped(&php_scope()).unwrap();
        assert_eq!(scoped.app(), name);
        assert!(scoped.validate().is_ok());
        // The PHP driver, and TZ (items without a path are kept by class); not my.cnf.
        assert_eq!(scoped.items().len(), 2);
    }

    #[test]
    fn scopes_are_bounded_and_checked() {
        assert!(Scope { classes: vec![], paths: vec!["relative/*".into()] }.validate().is_err());
        assert!(Scope { classes: vec![], paths: vec!["/a/[".into()] }.validate().is_err());
        let many = Scope { classes: vec![], paths: (0..=MAX_SCOPE_PATHS).map(|i| format!("/p{i}")).collect() };
        assert!(many.validate().is_err());
        assert!(php_scope().validate().is_ok());
    }

    proptest! {
        /// Projection only merges: machines of one full cluster share every projected
        /// cluster, and machines that differ only outside a scope share its cluster.
        #[test]
        fn projection_only_merges_clusters(
            a in proptest::collection::vec((0u8..3, 0u8..4, 0u8..3), 0..8),
            b in proptest::collection::vec((0u8..3, 0u8..4, 0u8..3), 0..8),
            classes in proptest::collection::vec(0usize..3, 0..3),
        ) {
            const CLASSES: [ResourceClass; 3] = [ResourceClass::Library, ResourceClass::Config, ResourceClass::Data];
            let fp = |spec: &[(u8, u8, u8)]| Fingerprint::new("x".into(), Digest([0; 32]), spec.iter().map(|(c, p, v)| {
                item(CLASSES[*c as usize], &format!("/p/{p}"), "", &v.to_string())
            }).collect());
            let scope = Scope { classes: classes.iter().map(|c| CLASSES[*c]).collect(), paths: vec!["/p/[01]".into()] };
            let m = scope.matcher().unwrap();
            let (fa, fb) = (fp(&a), fp(&b));
            if fa.cluster_key() == fb.cluster_key() {
                prop_assert_eq!(fa.cluster_key_for(Some(&scope)).unwrap(), fb.cluster_key_for(Some(&scope)).unwrap());
            }
            let same_inside = fa.project(&m).items() == fb.project(&m).items();
            let same_key = fa.cluster_key_for(Some(&scope)).unwrap() == fb.cluster_key_for(Some(&scope)).unwrap();
            prop_assert_eq!(same_inside, same_key);
        }
    }
}
