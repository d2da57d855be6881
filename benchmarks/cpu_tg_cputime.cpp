// Token generation on the CPU backend at a given KV depth, timed in process
// CPU time (on a shared, loaded machine wall-clock t/s measures the scheduler;
// with one compute thread the CPU time per token is the work itself). Like
// llama-bench tg at depth: fill the cache with `depth` tokens, then decode
// `n_gen` tokens one at a time; flash attention on, weight repacking off.
//
// Build against a tqpatch CPU build (static libs), e.g.:
//   B=$TQPATCH_CACHE/build/cpu; T=$TQPATCH_CACHE/work/llama.cpp-0c1e57098
//   g++ -O2 -std=c++17 benchmarks/cpu_tg_cputime.cpp -I$T/include -I$T/ggml/include
//       $B/src/libllama.a $B/ggml/src/libggml.a $B/ggml/src/libggml-cpu.a
//       $B/ggml/src/libggml-base.a -fopenmp -o cpu_tg_cputime
//   ./cpu_tg_cputime MODEL DEPTH N_GEN K/V [K/V ...]
// Prints ms of CPU time per generated token and t/s (1000/ms) per pair, and the
// ratio of t/s to the first pair.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

static double cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); // one compute thread: the calling one
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static ggml_type type_by_name(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * n = ggml_type_name((ggml_type) t);
        if (n && name == n) {
            return (ggml_type) t;
        }
    }
    fprintf(stderr, "unknown type %s\n", name.c_str());
    exit(2);
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL DEPTH N_GEN K/V [K/V ...]\n", argv[0]);
        return 2;
    }
    const int depth = atoi(argv[2]);
    const int n_gen = atoi(argv[3]);
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    printf("tg%d at depth %d, 1 thread, CPU time per token\n", n_gen, depth);
    double first_ts = 0.0;
    for (int a = 4; a < argc; ++a) {
        const std::string pair = argv[a];
        const size_t slash = pair.find('/');
        if (slash == std::string::npos) {
            fprintf(stderr, "pair as K/V: %s\n", pair.c_str());
            return 2;
        }
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = depth + n_gen + 64;
        cp.n_batch = 512;
        cp.n_ubatch = 512;
        cp.n_threads = 1;
        cp.n_threads_batch = 2; // the fill's speed is not measured
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        cp.type_k = type_by_name(pair.substr(0, slash));
        cp.type_v = type_by_name(pair.substr(slash + 1));
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) {
            fprintf(stderr, "%s: cannot create the context\n", pair.c_str());
            return 1;
        }
        std::vector<llama_token> tok(512);
        srand(1);
        for (int done = 0; done < depth; done += (int) tok.size()) {
            const int n = depth - done < 512 ? depth - done : 512;
            for (int i = 0; i < n; ++i) {
                tok[i] = rand() % n_vocab;
            }
            if (llama_decode(ctx, llama_batch_get_one(tok.data(), n)) != 0) {
                fprintf(stderr, "%s: fill failed\n", pair.c_str());
                return 1;
            }
        }
        llama_token t = 1;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) { // warm-up token
            return 1;
        }
        const double t0 = cpu_seconds();
        for (int i = 0; i < n_gen; ++i) {
            t = rand() % n_vocab;
            if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) {
                fprintf(stderr, "%s: decode failed\n", pair.c_str());
                return 1;
            }
        }
        const double ms = 1e3 * (cpu_seconds() - t0) / n_gen;
        const double ts = 1e3 / ms;
        if (a == 4) {
            first_ts = ts;
        }
        printf("%15s  %8.2f ms/token  %8.2f t/s  %6.3f\n", pair.c_str(), ms, ts, ts / first_ts);
        fflush(stdout);
        llama_free(ctx);
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
