// Turbo quantizer test data shared by the CUDA byte check
// (docs/measurements/cuda-speed/turbo-cuda-bytes.cpp, on a GPU) and the host
// emulation of the CUDA quantizer (tests/test_cuda_quantizer_emulation.py):
// adversarial blocks first (zeros, subnormals, 1/max subnormal or overflowing,
// NaN/inf, constants, values on and one ulp either side of max*boundary), then
// random Gaussian blocks with scales e^-30..e^30.
#pragma once

#include <cfloat>
#include <cmath>
#include <random>
#include <vector>

// points in (-1, 1) that include every codebook's boundaries near them and the 0 boundary
static const float turbo_test_points[] = {
    -0.8484532f, -0.63230044f, -0.35761398f, -0.17956185f, 0.0f, 0.09511176f, 0.35761398f, 0.63230044f, 0.8484532f,
    -0.66868645f, 0.52599406f, -0.40385145f, 0.29421636f, -0.19236687f, 0.37797076f, -0.09511176f };

static const int NE0 = 768; // row length: a multiple of every turbo block (32, 64, 96; tests/test_c_reference.py)

// qk values per block; n_adv_blocks receives the number of adversarial blocks (a whole number of NE0 rows)
static std::vector<float> make_data(int qk, const float * bounds, int nbounds, int & n_adv_blocks, int n_random = 8192) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::uniform_real_distribution<float> ue(-30.0f, 30.0f);
    std::vector<float> x;
    auto block = [&](auto f) { for (int j = 0; j < qk; ++j) x.push_back(f(j)); };
    // adversarial blocks
    block([&](int) { return 0.0f; });
    block([&](int) { return -0.0f; });
    block([&](int j) { return j == 5 ? 1.0f : 0.0f; });
    block([&](int j) { return j == 7 ? -3.0f : (j % 2 ? -0.0f : 0.0f); });
    block([&](int j) { return ldexpf((float) (j + 1), -149) * (j % 3 ? 1.0f : -1.0f); }); // all subnormal
    block([&](int j) { return j == 0 ? 1.0f : ldexpf((float) j, -149) * (j % 2 ? 1.0f : -1.0f); }); // u subnormal
    block([&](int j) { return j == 0 ? 1e-30f : ldexpf((float) j, -140) * (j % 2 ? 1.0f : -1.0f); });
    block([&](int j) { return (j % 2 ? -1.0f : 1.0f) * 3.0e38f * (float) (j + 1) / (float) qk; }); // 1/amax subnormal
    block([&](int j) { return j == 3 ? FLT_MAX : g(rng) * 1e37f; });
    block([&](int j) { return j == 9 ? NAN : 1.0f; });
    block([&](int j) { return j == 0 ? INFINITY : 1.0f; });
    block([&](int j) { return j == qk - 1 ? -INFINITY : 0.5f; });
    block([&](int) { return 0.25f; });
    block([&](int) { return -7.0f; });
    for (float amax : {1.0f, 3.0f, 0.1f, 1e-20f, 6.1e-5f, 65504.0f}) {
        // values on, just above and just below amax*boundary
        for (int v = 0; v < 3; ++v) {
            block([&](int j) {
                if (j == 0) return amax;
                const float t = amax * bounds[j % nbounds];
                return v == 0 ? t : nextafterf(t, v == 1 ? INFINITY : -INFINITY);
            });
        }
    }
    while (x.size() % NE0) {
        block([&](int) { return g(rng); });
    }
    n_adv_blocks = (int) (x.size() / qk);
    // random Gaussian blocks with scales over a wide range
    for (int b = 0; b < n_random; ++b) {
        const float s = expf(ue(rng));
        block([&](int) { return g(rng) * s; });
    }
    while (x.size() % NE0) { // whole rows
        const float s = expf(ue(rng));
        block([&](int) { return g(rng) * s; });
    }
    return x;
}

