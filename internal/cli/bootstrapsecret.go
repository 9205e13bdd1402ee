package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla.io/flotilla/internal/apiserver"
)

// serviceAccountNamespace is where a pod finds its own namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// bootstrapSecret is a Kubernetes Secret that holds a copy of the
// bootstrap credential under the key bootstrap-admin, for a server in a
// pod, whose data directory nobody can read (the image has no shell). The
// Helm chart makes the Secret, empty, and lets the server's ServiceAccount
// patch that one Secret and do nothing else; so the server merges its key
// into the Secret and never creates, reads or lists Secrets.
type bootstrapSecret struct {
	secrets         corev1client.SecretInterface
	namespace, name string
}

var _ apiserver.BootstrapCopy = (*bootstrapSecret)(nil)

// newBootstrapSecret reaches the Secret name of the server's namespace:
// with kubeconfig, the namespace of its context; without, in a pod, the
// pod's own, with its service account.
func newBootstrapSecret(kubeconfig, name string) (*bootstrapSecret, error) {
	var (
		cfg *rest.Config
		ns  string
		err error
	)
	if kubeconfig != "" {
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}, nil)
		if cfg, err = cc.ClientConfig(); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	} else {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("--bootstrap-secret %s: %w (outside a pod, pass --kubeconfig)", name, err)
		}
		b, err := os.ReadFile(serviceAccountNamespace)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap-secret %s: the pod's namespace: %w", name, err)
		}
		ns = strings.TrimSpace(string(b))
	}
	c, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &bootstrapSecret{secrets: c.Secrets(ns), namespace: ns, name: name}, nil
}

func (b *bootstrapSecret) String() string { return "Secret " + b.namespace + "/" + b.name }

// Put merges the credential into the Secret.
func (b *bootstrapSecret) Put(ctx context.Context, credential []byte) error {
	return b.patch(ctx, credential)
}

// Clear removes the credential's key from the Secret.
func (b *bootstrapSecret) Clear(ctx context.Context) error { return b.patch(ctx, nil) }

func (b *bootstrapSecret) patch(ctx context.Context, value []byte) error {
	var v any // null removes the key in a merge patch
	if value != nil {
		v = value // base64, as data wants
	}
	patch, err := json.Marshal(map[string]any{"data": map[string]any{apiserver.BootstrapAdminFile: v}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = b.secrets.Patch(ctx, b.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "flotilla-server"})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("it does not exist: the Helm chart makes it (helm upgrade puts it back); without the chart, create it empty first (kubectl -n %s create secret generic %s): %w", b.namespace, b.name, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("the server may not patch it: its ServiceAccount needs a Role allowing patch on secrets named %s in %s (the Helm chart grants it): %w", b.name, b.namespace, err)
	}
	return err
}
