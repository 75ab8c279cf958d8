//! The Kubernetes site driver's objects for the example tenants at the example
//! sites (a Westpole-like cluster with an Ingress, AKS with a Gateway API
//! HTTPRoute), against golden files in tests/golden/kubernetes/. After an
//! intended change: `FENICE_UPDATE_GOLDEN=1 cargo test --test kubernetes_render`,
//! then read the diff.

use fenice::api::site::Site;
use fenice::api::tenant::InvoicingTenant;
use fenice::site::kubernetes::{Images, RenderError, TENANT_LABEL, render};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn examples<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/examples/{file}")).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).unwrap())
        .collect()
}

fn images() -> Images {
    Images { fenice: "0.1.0".into(), postgres: "15-0.1.0".into() }
}

fn kubernetes_sites() -> Vec<Site> {
    examples::<Site>("sites.yaml").into_iter().filter(|s| s.spec.platform.is_some()).collect()
}

#[test]
fn every_example_tenant_renders_as_its_golden_file_at_each_kubernetes_site() {
    let update = std::env::var_os("FENICE_UPDATE_GOLDEN").is_some();
    let sites = kubernetes_sites();
    assert_eq!(sites.len(), 2, "the Westpole-like cluster and AKS");
    let mut tenants: Vec<InvoicingTenant> = examples("tenants.yaml");
    for (i, tenant) in tenants.iter_mut().enumerate() {
        tenant.metadata.uid = Some(format!("00000000-0000-0000-0000-00000000000{i}"));
    }
    let mut differ = Vec::new();
    for site in &sites {
        for tenant in &tenants {
            let objects = render(tenant, site, &images()).unwrap();
            let text = serde_json::to_string_pretty(&objects).unwrap() + "\n";
            let name =
                format!("{}@{}.json", tenant.metadata.name.as_deref().unwrap(), site.metadata.name.as_deref().unwrap());
            let path = format!("{ROOT}/tests/golden/kubernetes/{name}");
            if update {
                std::fs::create_dir_all(format!("{ROOT}/tests/golden/kubernetes")).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                differ.push(name);
            }
        }
    }
    // The Westpole-like site again, with CloudNativePG running PostgreSQL.
    let mut cnpg = sites[0].clone();
    cnpg.metadata.name = Some("westpole-rome-cnpg".into());
    cnpg.spec.platform.as_mut().unwrap().database = Some(fenice::api::site::DatabaseKind::CloudNativePg);
    for tenant in &mut tenants {
        for channel in &mut tenant.spec.sdi.channels {
            if channel.site == "westpole-rome" {
                channel.site = "westpole-rome-cnpg".into();
            }
        }
    }
    for tenant in &tenants {
        let objects = render(tenant, &cnpg, &images()).unwrap();
        let text = serde_json::to_string_pretty(&objects).unwrap() + "\n";
        let name = format!("{}@westpole-rome-cnpg.json", tenant.metadata.name.as_deref().unwrap());
        let path = format!("{ROOT}/tests/golden/kubernetes/{name}");
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            differ.push(name);
        }
    }
    assert!(
        differ.is_empty(),
        "rendered objects differ from tests/golden/kubernetes/ {differ:?}; see this file's header"
    );
}

#[test]
fn the_same_tenant_differs_between_sites_only_where_the_sites_differ() {
    let sites = kubernetes_sites();
    let tenant: InvoicingTenant = examples("tenants.yaml").remove(0);
    let [westpole, aks] = [&sites[0], &sites[1]].map(|s| render(&tenant, s, &images()).unwrap());
    let kinds = |objects: &[Value]| objects.iter().map(|o| o["kind"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let (wk, ak) = (kinds(&westpole), kinds(&aks));
    assert_eq!(wk.last().map(String::as_str), Some("Ingress"));
    // AKS switches DNS with a DNSEndpoint, the Westpole-like site with annotations.
    assert_eq!(ak[ak.len() - 2..], ["HTTPRoute", "DNSEndpoint"]);
    assert_eq!(wk[..wk.len() - 1], ak[..ak.len() - 2], "the same objects but the exposure and DNS");
    let record = &aks.last().unwrap()["spec"]["endpoints"][0];
    assert_eq!(record["dnsName"], "studio-rossi.fatture.example.it");
    assert_eq!(record["recordType"], "CNAME");
    assert_eq!(record["targets"][0], "public-gateway.italynorth.cloudapp.azure.com");
    let deployment = |objects: &[Value]| objects.iter().find(|o| o["kind"] == "Deployment").unwrap().clone();
    let (w, a) = (deployment(&westpole), deployment(&aks));
    let image = |d: &Value| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_owned();
    assert_eq!(image(&w), "registry.westpole.example.it/fenice/fenice:0.1.0");
    assert_eq!(image(&a), "fenice.azurecr.io/fenice/fenice:0.1.0");
    assert_eq!(a["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.azure.com/mode"], "user");
    assert!(w["spec"]["template"]["spec"].get("nodeSelector").is_none());
    let storage = |objects: &[Value]| {
        let set = objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
        set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"].as_str().unwrap().to_owned()
    };
    assert_eq!((storage(&westpole), storage(&aks)), ("westpole-ssd".into(), "managed-csi-premium".into()));
    // Every object carries the tenant's label and is owned by the tenant.
    for object in westpole.iter().chain(&aks) {
        assert_eq!(object["metadata"]["labels"][TENANT_LABEL], "studio-rossi", "{object}");
        assert_eq!(object["metadata"]["ownerReferences"][0]["kind"], "InvoicingTenant", "{object}");
    }
    // The app's SdI endpoint is the channel prepared at that site.
    let config = |objects: &[Value]| objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["data"].clone();
    assert_eq!(config(&westpole)["FENICE_SDI_ENDPOINT"], "https://sdi-rome.fatture.example.it/ws");
    assert_eq!(config(&aks)["FENICE_SDI_ENDPOINT"], "https://sdi-italynorth.fatture.example.it/ws");
}

#[test]
fn resources_follow_the_tier_and_secrets_stay_out_of_config_maps() {
    let site = &kubernetes_sites()[0];
    let tenants: Vec<InvoicingTenant> = examples("tenants.yaml");
    let requests: Vec<(String, String)> = tenants
        .iter()
        .map(|t| {
            let objects = render(t, site, &images()).unwrap();
            let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
            let r = &d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"];
            (format!("{:?}", t.spec.tier), r["cpu"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(requests.contains(&("Gold".into(), "500m".into())), "{requests:?}");
    assert!(requests.contains(&("Bronze".into(), "100m".into())), "{requests:?}");
    for tenant in &tenants {
        for object in render(tenant, site, &images()).unwrap() {
            if object["kind"] == "ConfigMap" {
                let text = object["data"].to_string().to_lowercase();
                assert!(!text.contains("password") && !text.contains("postgres://"), "{object}");
            }
        }
    }
}

#[test]
fn what_cannot_be_rendered_is_a_clear_error() {
    let mut tenant: InvoicingTenant = examples("tenants.yaml").remove(0);
    let site = &kubernetes_sites()[1];
    tenant.spec.sdi.channels.retain(|c| c.site != "azure-italynorth");
    let error = render(&tenant, site, &images()).unwrap_err();
    assert_eq!(error, RenderError::NoChannel { tenant: "studio-rossi".into(), site: "azure-italynorth".into() });
    assert!(error.to_string().contains("add one to spec.sdi.channels"));
    let mut bare = site.clone();
    bare.spec.platform = None;
    assert!(matches!(
        render(&examples("tenants.yaml").remove(0), &bare, &images()),
        Err(RenderError::NoPlatform { .. })
    ));
}

/// A Restore's copy at a Kubernetes site is beside the tenant, never in its
/// way: no object carries the tenant label (the tenant's Services and
/// NetworkPolicies select by it), nothing archives WAL into the tenant's
/// repositories, the copy's Secret holds its database URL and the one
/// repository's settings, and every object is among those deleted with the copy.
#[test]
fn a_restored_copy_stays_out_of_the_tenants_way_and_is_deleted_whole() {
    use fenice::site::restore_copy::{RESTORE_LABEL, job, names, objects};
    use zeroize::Zeroizing;
    let tenant: InvoicingTenant = examples("tenants.yaml").remove(0);
    for site in kubernetes_sites() {
        let env =
            std::collections::BTreeMap::from([("FENICE_REPOSITORY".to_owned(), Zeroizing::new("s3://b/p".to_owned()))]);
        let copy = objects(&tenant, &site, &images(), "restore-abc", &env, "pw").unwrap();
        let mut rendered = vec![copy.secret];
        rendered.extend(copy.objects);
        rendered.push(job(&tenant, &site, &images(), "restore-abc", Some("ab12cd34"), None).unwrap());
        for object in &rendered {
            let labels = &object["metadata"]["labels"];
            assert!(labels.get(TENANT_LABEL).is_none(), "{object}");
            assert_eq!(labels[RESTORE_LABEL], "restore-abc");
        }
        let text = serde_json::to_string(&rendered).unwrap();
        assert!(!text.contains("archive"), "{text}");
        let secret = &rendered[0]["stringData"];
        assert_eq!(secret["FENICE_DB_URL"], "postgres://postgres:pw@restore-abc:5432/postgres");
        assert_eq!(secret["FENICE_REPOSITORY"], "s3://b/p");
        let named: Vec<(String, String)> =
            names("restore-abc").into_iter().map(|(_, k, n)| (k.to_owned(), n)).collect();
        for object in &rendered {
            let this =
                (object["kind"].as_str().unwrap().to_owned(), object["metadata"]["name"].as_str().unwrap().to_owned());
            assert!(named.contains(&this), "{this:?} is not deleted with the copy");
        }
        let job = rendered.last().unwrap();
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.windows(2).any(|w| w == ["--result-file", "/dev/termination-log"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--snapshot", "ab12cd34"]), "{args:?}");
        assert_eq!(container["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(job["spec"]["backoffLimit"], 0, "a second run would meet the first one's data");
        assert!(!args.contains(&"--drill-endpoint"), "{args:?}");
        // A drill's Job also serves the copy and sends its test invoice to the drill's endpoint.
        let drill = fenice::site::restore_copy::job(
            &tenant,
            &site,
            &images(),
            "restore-abc",
            None,
            Some("http://sdi-test:8080/"),
        );
        let drill = drill.unwrap();
        let args = drill["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        let args: Vec<&str> = args.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.windows(2).any(|w| w == ["--drill-endpoint", "http://sdi-test:8080/"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--vat", tenant.spec.vat_number.as_str()]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--company", tenant.spec.display_name.as_str()]), "{args:?}");
    }
}

/// At a CloudNativePG site the database is a Cluster (no StatefulSet, no
/// WAL archiving into the repositories), its superuser Secret is the type
/// that operator wants and names its read-write Service, and no warm standby
/// can be made there.
#[test]
fn a_cloud_native_pg_site_gets_a_cluster_and_no_warm_standby() {
    use fenice::api::site::DatabaseKind;
    use fenice::site::kubernetes::{database_secret, warm_standby};
    let mut site = kubernetes_sites().remove(0);
    site.spec.platform.as_mut().unwrap().database = Some(DatabaseKind::CloudNativePg);
    let tenant: InvoicingTenant = examples("tenants.yaml").remove(0);
    let objects = render(&tenant, &site, &images()).unwrap();
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"Cluster") && !kinds.contains(&"StatefulSet"), "{kinds:?}");
    let cluster = objects.iter().find(|o| o["kind"] == "Cluster").unwrap();
    assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
    assert_eq!(cluster["spec"]["instances"], 2, "a Gold tenant has a replica");
    assert_eq!(cluster["spec"]["superuserSecret"]["name"], "studio-rossi-db");
    assert_eq!(cluster["spec"]["inheritedMetadata"]["labels"][TENANT_LABEL], "studio-rossi");
    assert!(!serde_json::to_string(&objects).unwrap().contains("wal-push"));
    let secret = database_secret(&tenant, &site, "pw").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(secret["stringData"]["url"], "postgres://postgres:pw@studio-rossi-db-rw:5432/postgres");
    let refused = warm_standby(&tenant, &site, &images(), "s3://b/p").unwrap_err();
    assert!(matches!(refused, RenderError::CloudNativePgStandby { .. }), "{refused}");
    assert!(refused.to_string().contains("set spec.standby to Cold"), "{refused}");
}
