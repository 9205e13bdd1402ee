package reduce

import (
	"fmt"
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
)

// Sample is one value of one raw series from a scrape. Name is the series'
// name as exposed, with a histogram's _bucket, _sum or _count suffix.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Parse reads one scrape target's exposition body in the Prometheus text
// format. Counters, gauges and untyped metrics give one sample each; a
// histogram gives its _bucket samples (with le), _sum and _count. Summaries
// are skipped: nothing in Istio's standard metrics is one. The order of the
// result is unspecified.
func Parse(r io.Reader) ([]Sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse exposition: %w", err)
	}
	var out []Sample
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			out = appendSamples(out, name, mf.GetType(), m)
		}
	}
	return out, nil
}

func appendSamples(out []Sample, name string, typ dto.MetricType, m *dto.Metric) []Sample {
	base := func() map[string]string {
		ls := make(map[string]string, len(m.GetLabel())+1)
		for _, lp := range m.GetLabel() {
			ls[lp.GetName()] = lp.GetValue()
		}
		return ls
	}
	switch typ {
	case dto.MetricType_COUNTER:
		return append(out, Sample{Name: name, Labels: base(), Value: m.GetCounter().GetValue()})
	case dto.MetricType_GAUGE:
		return append(out, Sample{Name: name, Labels: base(), Value: m.GetGauge().GetValue()})
	case dto.MetricType_UNTYPED:
		return append(out, Sample{Name: name, Labels: base(), Value: m.GetUntyped().GetValue()})
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		for _, b := range h.GetBucket() {
			ls := base()
			ls[model.BucketLabel] = labels.FormatOpenMetricsFloat(b.GetUpperBound())
			out = append(out, Sample{Name: name + "_bucket", Labels: ls, Value: either(b.GetCumulativeCountFloat(), b.GetCumulativeCount())})
		}
		out = append(out,
			Sample{Name: name + "_sum", Labels: base(), Value: h.GetSampleSum()},
			Sample{Name: name + "_count", Labels: base(), Value: either(h.GetSampleCountFloat(), h.GetSampleCount())})
		return out
	default:
		return out
	}
}

// either picks a histogram count from its float or its integer field; the
// text parser fills exactly one of them.
func either(f float64, u uint64) float64 {
	if f != 0 {
		return f
	}
	return float64(u)
}
