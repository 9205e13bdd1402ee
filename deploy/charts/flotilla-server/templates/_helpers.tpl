{{/* The labels of every object of the release. */}}
{{- define "flotilla-server.labels" -}}
app.kubernetes.io/name: flotilla-server
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "flotilla-server.selector" -}}
app.kubernetes.io/name: flotilla-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference: the digest when given, else the tag (default: appVersion). */}}
{{- define "flotilla-server.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The Secrets the pods read. */}}
{{- define "flotilla-server.signingKeysSecret" -}}
{{- .Values.signingKeys.existingSecret | default (printf "%s-signing-keys" .Release.Name) -}}
{{- end }}
{{- define "flotilla-server.storeSecret" -}}
{{- .Values.store.postgres.existingSecret | default (printf "%s-store" .Release.Name) -}}
{{- end }}
{{- define "flotilla-server.bootstrapSecret" -}}
{{- printf "%s-bootstrap-admin" .Release.Name -}}
{{- end }}

{{/*
  A new key set in the server's format (internal/authn: the first key signs):
  an Ed25519 seed of 32 random bytes, base64, and an id like the server's own.
*/}}
{{- define "flotilla-server.newKeySet" -}}
{{- $key := dict "id" (printf "%s-%s" (dateInZone "20060102" now "UTC") (randAlphaNum 8)) "created" (dateInZone "2006-01-02T15:04:05Z" now "UTC") "seed" (randBytes 32) -}}
{{- dict "keys" (list $key) | toJson -}}
{{- end }}

{{/* Refusals of values that the schema cannot express. */}}
{{- define "flotilla-server.check" -}}
{{- $pg := eq .Values.store.type "postgres" -}}
{{- if and (not $pg) (gt (int .Values.replicas) 1) -}}
{{- fail (printf "replicas: %d with store.type sqlite: SQLite is one file on one volume that one server opens; keep replicas: 1, or use store.type postgres for more" (int .Values.replicas)) -}}
{{- end -}}
{{- if and $pg (not .Values.store.postgres.url) (not .Values.store.postgres.existingSecret) -}}
{{- fail "store.postgres.url: required with store.type postgres, or store.postgres.existingSecret naming a Secret that holds the URL" -}}
{{- end -}}
{{- if and .Values.store.postgres.url .Values.store.postgres.existingSecret -}}
{{- fail "store.postgres.url and store.postgres.existingSecret: give one of them, not both" -}}
{{- end -}}
{{- if and (not $pg) (or .Values.store.postgres.url .Values.store.postgres.existingSecret) -}}
{{- fail "store.postgres: a URL or Secret is set, but store.type is sqlite; give store.type postgres to use PostgreSQL" -}}
{{- end -}}
{{- if and $pg .Values.store.sqlite.existingClaim -}}
{{- fail "store.sqlite.existingClaim: set with store.type postgres, which keeps no data on a volume" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) -}}
{{- fail "ingress.hosts: required when ingress.enabled, the names people and agents reach the server by" -}}
{{- end -}}
{{- end }}

{{/* The pod, the same for the StatefulSet (SQLite) and the Deployment (PostgreSQL). */}}
{{- define "flotilla-server.pod" -}}
{{- $pg := eq .Values.store.type "postgres" -}}
{{- $scheme := ternary "HTTPS" "HTTP" (ne .Values.tls.secretName "") -}}
metadata:
  labels:
    {{- include "flotilla-server.selector" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or .Values.store.postgres.url .Values.podAnnotations }}
  annotations:
    {{- with .Values.store.postgres.url }}
    # A new PostgreSQL URL in the chart's Secret restarts the servers.
    checksum/store: {{ . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ .Release.Name }}
  # Its token lets the server patch the bootstrap Secret, and nothing else.
  automountServiceAccountToken: true
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # The server lets requests in flight finish for 30 s after SIGTERM.
  terminationGracePeriodSeconds: 45
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: server
      image: {{ include "flotilla-server.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - server
        - --listen=:8080
        - --data-dir=/var/lib/flotilla
        {{- if $pg }}
        - --store=$(FLOTILLA_STORE)
        {{- else }}
        - --store=sqlite
        {{- end }}
        - --signing-key-file=/etc/flotilla/signing-keys/signing-keys.json
        - {{ printf "--issuer=%s" .Values.issuer | quote }}
        - --bootstrap-secret={{ include "flotilla-server.bootstrapSecret" . }}
        - --bootstrap-credential-ttl={{ .Values.bootstrap.ttl }}
        {{- if .Values.bootstrap.reset }}
        - --reset-bootstrap-credential
        {{- end }}
        - --agent-credential-ttl={{ .Values.agentCredentialTTL }}
        {{- if .Values.tls.secretName }}
        - --tls-cert=/etc/flotilla/tls/tls.crt
        - --tls-key=/etc/flotilla/tls/tls.key
        {{- end }}
        {{- range .Values.trustedProxies }}
        - {{ printf "--trusted-proxy=%s" . | quote }}
        {{- end }}
        {{- with .Values.oidc.issuer }}
        - {{ printf "--oidc-issuer=%s" . | quote }}
        - {{ printf "--oidc-client-id=%s" $.Values.oidc.clientID | quote }}
        {{- if $.Values.oidc.ca }}
        - --oidc-ca-file=/etc/flotilla/oidc/ca.crt
        {{- end }}
        {{- end }}
        - --log-level={{ .Values.logLevel }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if $pg }}
      env:
        # The URL (and its password) stays out of the pod spec: the kubelet
        # puts it into --store from the Secret.
        - name: FLOTILLA_STORE
          valueFrom:
            secretKeyRef:
              name: {{ include "flotilla-server.storeSecret" . }}
              key: {{ .Values.store.postgres.existingSecretKey }}
      {{- end }}
      ports:
        - name: api
          containerPort: 8080
          protocol: TCP
      # /healthz answers while the process serves; /readyz also needs the
      # store and the central control plane, so a replica that lost
      # PostgreSQL leaves the Service without being restarted.
      livenessProbe:
        httpGet: {path: /healthz, port: api, scheme: {{ $scheme }}}
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      readinessProbe:
        httpGet: {path: /readyz, port: api, scheme: {{ $scheme }}}
        periodSeconds: 5
        timeoutSeconds: 5
      # The store's migrations run before the server listens.
      startupProbe:
        httpGet: {path: /healthz, port: api, scheme: {{ $scheme }}}
        periodSeconds: 2
        failureThreshold: 150
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - name: data
          mountPath: /var/lib/flotilla
        - name: signing-keys
          mountPath: /etc/flotilla/signing-keys
          readOnly: true
        {{- if .Values.tls.secretName }}
        - name: tls
          mountPath: /etc/flotilla/tls
          readOnly: true
        {{- end }}
        {{- if and .Values.oidc.issuer .Values.oidc.ca }}
        - name: oidc-ca
          mountPath: /etc/flotilla/oidc
          readOnly: true
        {{- end }}
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- if $pg }}
    # With PostgreSQL the data directory holds only this replica's copy of
    # the bootstrap credential.
    - name: data
      emptyDir:
        sizeLimit: 16Mi
    {{- else if .Values.store.sqlite.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.store.sqlite.existingClaim }}
    {{- end }}
    - name: signing-keys
      secret:
        secretName: {{ include "flotilla-server.signingKeysSecret" . }}
        defaultMode: 0440
        items:
          - key: signing-keys.json
            path: signing-keys.json
    {{- if .Values.tls.secretName }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- if and .Values.oidc.issuer .Values.oidc.ca }}
    - name: oidc-ca
      configMap:
        name: {{ .Release.Name }}-oidc-ca
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
