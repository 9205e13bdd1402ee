package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestAFailedClusterIsReportedWithoutTheCancellationsItCaused(t *testing.T) {
	boom := errors.New("kube-apiserver exited")
	cancelled := fmt.Errorf("wait for etcd: %w", context.Canceled)
	tests := []struct {
		name string
		errs []error
		want []error
		not  []error
	}{
		{"one failure, one cancelled", []error{cancelled, boom}, []error{boom}, []error{context.Canceled}},
		{"all cancelled by the caller", []error{cancelled, cancelled}, []error{context.Canceled}, nil},
		{"no failure", []error{nil, nil}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := firstCauses(tt.errs)
			if (got == nil) != (len(tt.want) == 0) {
				t.Fatalf("firstCauses = %v, want errors %v", got, tt.want)
			}
			for _, w := range tt.want {
				if !errors.Is(got, w) {
					t.Errorf("firstCauses = %v, want it to contain %v", got, w)
				}
			}
			for _, n := range tt.not {
				if errors.Is(got, n) {
					t.Errorf("firstCauses = %v, want it without %v", got, n)
				}
			}
		})
	}
}
