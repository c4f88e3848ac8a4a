//! Known field names of the common built-in kinds, as a structural schema in
//! the CRD format, so unknown fields (typos) in built-ins are refused under
//! `fieldValidation=Strict` and dropped otherwise, as the API server does.
//! Only names are checked, not types; nodes not listed here accept anything.

use serde_json::{Map, Value, json};

fn any() -> Value {
    json!({"x-kubernetes-preserve-unknown-fields": true})
}

/// An object whose listed fields accept anything.
fn obj(fields: &[&str]) -> Value {
    let props: Map<String, Value> = fields.iter().map(|f| ((*f).to_string(), any())).collect();
    json!({"type": "object", "properties": props})
}

fn with(mut o: Value, field: &str, schema: Value) -> Value {
    o["properties"][field] = schema;
    o
}

fn list_of(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn metadata() -> Value {
    obj(&[
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ])
}

fn container() -> Value {
    let c = obj(&[
        "name",
        "image",
        "command",
        "args",
        "workingDir",
        "ports",
        "envFrom",
        "env",
        "resources",
        "resizePolicy",
        "restartPolicy",
        "volumeMounts",
        "volumeDevices",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
        "securityContext",
        "stdin",
        "stdinOnce",
        "tty",
    ]);
    let c = with(
        c,
        "ports",
        list_of(obj(&[
            "name",
            "hostPort",
            "containerPort",
            "protocol",
            "hostIP",
        ])),
    );
    let c = with(c, "env", list_of(obj(&["name", "value", "valueFrom"])));
    with(
        c,
        "volumeMounts",
        list_of(obj(&[
            "name",
            "readOnly",
            "recursiveReadOnly",
            "mountPath",
            "subPath",
            "mountPropagation",
            "subPathExpr",
        ])),
    )
}

fn pod_spec() -> Value {
    let s = obj(&[
        "volumes",
        "initContainers",
        "containers",
        "ephemeralContainers",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "dnsPolicy",
        "nodeSelector",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "nodeName",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
        "securityContext",
        "imagePullSecrets",
        "hostname",
        "subdomain",
        "affinity",
        "schedulerName",
        "tolerations",
        "hostAliases",
        "priorityClassName",
        "priority",
        "dnsConfig",
        "readinessGates",
        "runtimeClassName",
        "enableServiceLinks",
        "preemptionPolicy",
        "overhead",
        "topologySpreadConstraints",
        "setHostnameAsFQDN",
        "os",
        "hostUsers",
        "schedulingGates",
        "resourceClaims",
        "resources",
    ]);
    let s = with(s, "containers", list_of(container()));
    with(s, "initContainers", list_of(container()))
}

fn template() -> Value {
    with(
        with(obj(&["metadata", "spec"]), "metadata", metadata()),
        "spec",
        pod_spec(),
    )
}

fn top(extra: &[&str], spec: Option<Value>) -> Value {
    let mut fields = vec!["apiVersion", "kind", "metadata", "status"];
    fields.extend_from_slice(extra);
    let mut o = with(obj(&fields), "metadata", metadata());
    if let Some(s) = spec {
        o = with(o, "spec", s);
    }
    o
}

/// The schema for a built-in kind, if known.
pub fn schema(kind: &str) -> Option<Value> {
    Some(match kind {
        "Deployment" => top(
            &["spec"],
            Some(with(
                obj(&[
                    "replicas",
                    "selector",
                    "template",
                    "strategy",
                    "minReadySeconds",
                    "revisionHistoryLimit",
                    "paused",
                    "progressDeadlineSeconds",
                ]),
                "template",
                template(),
            )),
        ),
        "ReplicaSet" => top(
            &["spec"],
            Some(with(
                obj(&["replicas", "minReadySeconds", "selector", "template"]),
                "template",
                template(),
            )),
        ),
        "StatefulSet" => top(
            &["spec"],
            Some(with(
                obj(&[
                    "replicas",
                    "selector",
                    "template",
                    "volumeClaimTemplates",
                    "serviceName",
                    "podManagementPolicy",
                    "updateStrategy",
                    "revisionHistoryLimit",
                    "minReadySeconds",
                    "persistentVolumeClaimRetentionPolicy",
                    "ordinals",
                ]),
                "template",
                template(),
            )),
        ),
        "DaemonSet" => top(
            &["spec"],
            Some(with(
                obj(&[
                    "selector",
                    "template",
                    "updateStrategy",
                    "minReadySeconds",
                    "revisionHistoryLimit",
                ]),
                "template",
                template(),
            )),
        ),
        "Job" => top(
            &["spec"],
            Some(with(
                obj(&[
                    "parallelism",
                    "completions",
                    "activeDeadlineSeconds",
                    "podFailurePolicy",
                    "successPolicy",
                    "backoffLimit",
                    "backoffLimitPerIndex",
                    "maxFailedIndexes",
                    "selector",
                    "manualSelector",
                    "template",
                    "ttlSecondsAfterFinished",
                    "completionMode",
                    "suspend",
                    "podReplacementPolicy",
                    "managedBy",
                ]),
                "template",
                template(),
            )),
        ),
        "CronJob" => top(
            &["spec"],
            Some(obj(&[
                "schedule",
                "timeZone",
                "startingDeadlineSeconds",
                "concurrencyPolicy",
                "suspend",
                "jobTemplate",
                "successfulJobsHistoryLimit",
                "failedJobsHistoryLimit",
            ])),
        ),
        "Pod" => top(&["spec"], Some(pod_spec())),
        "Service" => top(
            &["spec"],
            Some(with(
                obj(&[
                    "ports",
                    "selector",
                    "clusterIP",
                    "clusterIPs",
                    "type",
                    "externalIPs",
                    "sessionAffinity",
                    "loadBalancerIP",
                    "loadBalancerSourceRanges",
                    "externalName",
                    "externalTrafficPolicy",
                    "healthCheckNodePort",
                    "publishNotReadyAddresses",
                    "sessionAffinityConfig",
                    "ipFamilies",
                    "ipFamilyPolicy",
                    "allocateLoadBalancerNodePorts",
                    "loadBalancerClass",
                    "internalTrafficPolicy",
                    "trafficDistribution",
                ]),
                "ports",
                list_of(obj(&[
                    "name",
                    "protocol",
                    "appProtocol",
                    "port",
                    "targetPort",
                    "nodePort",
                ])),
            )),
        ),
        "ConfigMap" => top(&["data", "binaryData", "immutable"], None),
        "Secret" => top(&["data", "stringData", "type", "immutable"], None),
        "Namespace" => top(&["spec"], Some(obj(&["finalizers"]))),
        "ServiceAccount" => top(
            &[
                "secrets",
                "imagePullSecrets",
                "automountServiceAccountToken",
            ],
            None,
        ),
        "Role" => top(&["rules"], None),
        "ClusterRole" => top(&["rules", "aggregationRule"], None),
        "RoleBinding" | "ClusterRoleBinding" => top(&["subjects", "roleRef"], None),
        "PersistentVolumeClaim"
        | "Ingress"
        | "NetworkPolicy"
        | "HorizontalPodAutoscaler"
        | "PodDisruptionBudget"
        | "Lease" => top(&["spec"], None),
        _ => return None,
    })
}
