{{- define "flare-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flare-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flare-operator.labels" -}}
{{ include "flare-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flare-operator
app.kubernetes.io/component: {{ .Values.mode }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flare-operator.serviceAccountName" -}}
{{- default (include "flare-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "flare-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "flare-operator.orchestrates" -}}
{{- if has .Values.mode (list "orchestrator" "all") }}true{{ end -}}
{{- end -}}

{{- define "flare-operator.gateways" -}}
{{- if has .Values.mode (list "gateway" "all") }}true{{ end -}}
{{- end -}}

{{/* The site namespace, the org's hub namespace and the NVFlare site name of a gateway. */}}
{{- define "flare-operator.siteNamespace" -}}
{{- default .Release.Namespace .Values.gateway.namespace -}}
{{- end -}}
{{- define "flare-operator.hubNamespace" -}}
{{- default .Values.gateway.org .Values.gateway.hubNamespace -}}
{{- end -}}
{{- define "flare-operator.site" -}}
{{- default .Values.gateway.org .Values.gateway.site -}}
{{- end -}}

{{- /* What the NVFlare workloads of a namespace need: the orchestrator's servers in consumer
namespaces, a gateway's clients in its site namespace (runtime/kubernetes.py, builders/workloads.py). */ -}}
{{- define "flare-operator.workloadRules" -}}
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, secrets, persistentvolumeclaims]
  verbs: [get, list, watch, create, update, patch, delete]
# Pods: read their state for status and Events; patch (annotate) client Pods so the kubelet
# rewrites their approved-jobs volume at once (KubernetesRuntime.nudge_client_pods).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
