#pragma once
// Prometheus text exposition helpers: a histogram with fixed buckets and label formatting.
// Single-threaded like the rest of the daemon.
#include <cstdint>
#include <string>
#include <vector>

namespace hangar::metrics {

class Histogram {
  public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double value);
    // Appends the _bucket/_sum/_count lines of `name` with `labels` ("" or `a="b",c="d"`).
    void render(std::string& out, const std::string& name, const std::string& labels) const;
    uint64_t count() const { return count_; }

  private:
    std::vector<double> bounds_;
    std::vector<uint64_t> counts_;
    double sum_ = 0;
    uint64_t count_ = 0;
};

// Latency buckets in seconds, 50 µs to 10 s.
std::vector<double> latency_buckets();
// A label value escaped for the text format.
std::string label(const std::string& value);
// "# HELP name help\n# TYPE name type\n"
void header(std::string& out, const std::string& name, const std::string& type,
            const std::string& help);

}  // namespace hangar::metrics
