{{/* The release's full name: the release name, unless it already says ptwatch. */}}
{{- define "ptwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: app.kubernetes.io/name is what deploy/prometheus'
job label comes from (job="ptwatch"). */}}
{{- define "ptwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ptwatch.labels" -}}
{{ include "ptwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ptwatch.serviceAccountName" -}}
{{- default (include "ptwatch.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The capabilities to add: CAP_BPF and CAP_PERFMON always; CAP_SYS_ADMIN
for the exact reclaim accounting, and on runtimes whose default seccomp
profile opens bpf() and perf_event_open() only to CAP_SYS_ADMIN. */}}
{{- define "ptwatch.capabilities" -}}
{{- $caps := list "BPF" "PERFMON" -}}
{{- if or .Values.capabilities.exactAccounting (eq .Values.capabilities.runtime "cri-o") -}}
{{- $caps = append $caps "SYS_ADMIN" -}}
{{- end -}}
{{- toJson $caps -}}
{{- end -}}

{{/* The relabeling both monitors apply: deploy/prometheus' rules and the
dashboard select by `node`. */}}
{{- define "ptwatch.nodeRelabeling" -}}
relabelings:
  - sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
    action: replace
{{- end -}}
