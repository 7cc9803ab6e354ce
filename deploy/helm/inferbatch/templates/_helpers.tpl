{{/* Names ------------------------------------------------------------------------ */}}

{{- define "inferbatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inferbatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "inferbatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: "inferbatch.labels" takes (dict "root" $ "component" "api") */}}
{{- define "inferbatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferbatch.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "inferbatch.labels" -}}
helm.sh/chart: {{ include "inferbatch.chart" .root }}
{{ include "inferbatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: inferbatch
{{- end }}

{{- define "inferbatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inferbatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inferbatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "inferbatch.secretName" -}}
{{- default (include "inferbatch.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "inferbatch.blobClaimName" -}}
{{- default (printf "%s-blobs" (include "inferbatch.fullname" .)) .Values.blobs.persistence.existingClaim }}
{{- end }}

{{/* Where the engines files are mounted (JSON: the registry reads them by suffix). */}}
{{- define "inferbatch.enginesDir" -}}/etc/inferbatch{{- end }}

{{- define "inferbatch.validate" -}}
{{- if and .Values.engineUrl .Values.engines }}
{{- fail "set engineUrl or engines, not both (INFERBATCH_ENGINE_URL and INFERBATCH_ENGINES exclude each other): set engineUrl to \"\" when you list engines" }}
{{- end }}
{{- if not (has .Values.autoscaling.mode (list "keda" "hpa" "none")) }}
{{- fail (printf "autoscaling.mode must be keda, hpa or none, not %q" .Values.autoscaling.mode) }}
{{- end }}
{{- if and (not .Values.secret.existingSecret) (not .Values.database.url) }}
{{- fail "set database.url or secret.existingSecret (a Secret with the PostgreSQL URL)" }}
{{- end }}
{{- if not (has .Values.database.poolMode (list "session" "transaction")) }}
{{- fail (printf "database.poolMode must be session or transaction, not %q" .Values.database.poolMode) }}
{{- end }}
{{- if and (eq .Values.database.poolMode "transaction") (not .Values.secret.existingSecret) (not .Values.database.sessionUrl) }}
{{- fail "database.poolMode transaction needs database.sessionUrl: a direct URL for the leader lock, LISTEN and migrations (through the pooler two schedulers could both lead)" }}
{{- end }}
{{- with .Values.objectStorage.url }}
{{- if not (regexMatch "^s3://[A-Za-z0-9][A-Za-z0-9._-]+[A-Za-z0-9](/.*)?$" .) }}
{{- fail (printf "objectStorage.url must be s3://BUCKET or s3://BUCKET/PREFIX, not %q" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level pieces shared by every workload ---------------------------------- */}}

{{- define "inferbatch.podCommon" -}}
serviceAccountName: {{ include "inferbatch.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "inferbatch.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* "true" when file contents live on the shared volume (no object storage configured). */}}
{{- define "inferbatch.usesBlobVolume" -}}
{{- if not .Values.objectStorage.url }}true{{ end }}
{{- end }}

{{- define "inferbatch.blobVolume" -}}
{{- if include "inferbatch.usesBlobVolume" . }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "inferbatch.blobClaimName" . }}
{{- end }}
{{- end }}

{{- define "inferbatch.blobMount" -}}
{{- if include "inferbatch.usesBlobVolume" . }}
- name: blobs
  mountPath: {{ .Values.blobs.mountPath }}
{{- end }}
{{- end }}

{{/*
Where file contents live, for the api and the scheduler: the object storage bucket with
the AWS SDK's standard settings (credentials from a Secret, or none: the workload
identity of the ServiceAccount), else the directory on the shared volume.
*/}}
{{- define "inferbatch.blobEnv" -}}
{{- $os := .Values.objectStorage }}
{{- if $os.url }}
- name: INFERBATCH_BLOB_URL
  value: {{ $os.url | quote }}
{{- with $os.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $os.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $os.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.secretAccessKeyKey }}
{{- if $os.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.sessionTokenKey }}
      optional: true
{{- end }}
{{- end }}
{{- else }}
- name: INFERBATCH_BLOB_DIR
  value: {{ .Values.blobs.mountPath | quote }}
{{- end }}
{{- end }}

{{- define "inferbatch.enginesVolume" -}}
- name: engines
{{- if .Values.enginesInSecret }}
  secret:
    secretName: {{ include "inferbatch.fullname" . }}-engines
{{- else }}
  configMap:
    name: {{ include "inferbatch.fullname" . }}-engines
{{- end }}
{{- end }}

{{/*
Environment shared by every container: database, secrets, `config` and extraEnv.
Takes the root context.
*/}}
{{- define "inferbatch.env" -}}
- name: INFERBATCH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "inferbatch.secretName" . }}
      key: {{ .Values.secret.databaseUrlKey }}
- name: INFERBATCH_DATABASE_SESSION_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "inferbatch.secretName" . }}
      key: {{ .Values.secret.sessionUrlKey }}
      optional: true
{{- if ne .Values.database.poolMode "session" }}
- name: INFERBATCH_DATABASE_POOL_MODE
  value: {{ .Values.database.poolMode | quote }}
{{- end }}
- name: INFERBATCH_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "inferbatch.secretName" . }}
      key: {{ .Values.secret.apiKeyKey }}
      optional: true
- name: INFERBATCH_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "inferbatch.secretName" . }}
      key: {{ .Values.secret.sessionSecretKey }}
      optional: true
- name: INFERBATCH_DATA_DIR
  value: /tmp/inferbatch
{{- range $key, $value := .Values.config }}
- name: {{ printf "INFERBATCH_%s" (upper $key) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Engine settings for the api (pool "") or a worker pool: (dict "root" $ "pool" "spot") */}}
{{- define "inferbatch.engineEnv" -}}
{{- $root := .root }}
{{- $poolEngines := dict }}
{{- if .pool }}
{{- $poolEngines = (index $root.Values.workers .pool).engines }}
{{- end }}
{{- if $poolEngines }}
- name: INFERBATCH_ENGINES
  value: {{ printf "%s/engines-%s.json" (include "inferbatch.enginesDir" $root) .pool | quote }}
{{- else if $root.Values.engines }}
- name: INFERBATCH_ENGINES
  value: {{ printf "%s/engines.json" (include "inferbatch.enginesDir" $root) | quote }}
{{- else if $root.Values.engineUrl }}
- name: INFERBATCH_ENGINE_URL
  value: {{ $root.Values.engineUrl | quote }}
{{- end }}
{{- end }}

{{/* Whether the engines volume is needed: (dict "root" $ "pool" "spot"|"") */}}
{{- define "inferbatch.usesEnginesFile" -}}
{{- $poolEngines := dict }}
{{- if .pool }}
{{- $poolEngines = (index .root.Values.workers .pool).engines }}
{{- end }}
{{- if or $poolEngines .root.Values.engines }}true{{ end }}
{{- end }}

{{- define "inferbatch.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}
