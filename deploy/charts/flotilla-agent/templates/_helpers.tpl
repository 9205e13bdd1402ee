{{/* The labels of every object of the release. */}}
{{- define "flotilla-agent.labels" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "flotilla-agent.selector" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference: the digest when given, else the tag (default: appVersion). */}}
{{- define "flotilla-agent.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The Secret holding the join token (and the server's CA). */}}
{{- define "flotilla-agent.joinSecret" -}}
{{- .Values.existingSecret | default (printf "%s-join" .Release.Name) -}}
{{- end }}

{{/* Refusals of values that the schema cannot express. */}}
{{- define "flotilla-agent.check" -}}
{{- if ne .Release.Namespace "flotilla-system" -}}
{{- fail (printf "namespace %q: the agent keeps its credential and stored bundle in flotilla-system; install with -n flotilla-system --create-namespace" .Release.Namespace) -}}
{{- end -}}
{{- if not .Values.cluster -}}
{{- fail "cluster: required, this cluster's name in Flotilla (flotilla cluster onboard NAME -o helm-values prints it)" -}}
{{- end -}}
{{- if not .Values.server.url -}}
{{- fail "server.url: required, the management plane's URL as the agent dials it (flotilla cluster onboard NAME -o helm-values prints it)" -}}
{{- end -}}
{{- if and (not .Values.joinToken) (not .Values.existingSecret) -}}
{{- fail "joinToken: required unless existingSecret names a Secret with the token (flotilla cluster onboard NAME -o helm-values prints one)" -}}
{{- end -}}
{{- if and .Values.joinToken .Values.existingSecret -}}
{{- fail "joinToken and existingSecret: give one of them, not both" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.managementPlane.cidrs) -}}
{{- fail "networkPolicy.managementPlane.cidrs: required when networkPolicy.enabled, the addresses the agent dials" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.apiServer.cidrs) -}}
{{- fail "networkPolicy.apiServer.cidrs: required when networkPolicy.enabled, the API server's endpoints (kubectl get endpoints kubernetes)" -}}
{{- end -}}
{{- end }}
