#!/bin/bash
# trial 10: validation splits re-evaluated with MODEL.VOTING.TEST_SCORE mean (same weights)
cd /work/main
ev() {  # run-folder fold out
  OMP_NUM_THREADS=1 .venv/bin/python tools/train_net.py --config-file $1/stage2_voting/config.yaml --eval-only \
    MODEL.VOTING.BORDER_READOUT_WINDOW 1 MODEL.VOTING.TEST_SCORE mean MODEL.CONTEXT.TEST_MU -1.0 \
    MODEL.WEIGHTS $1/stage2_voting/model_final.pth DATASETS.TEST "('nt_real_fold$2_val',)" OUTPUT_DIR $3
}
ev output/benchmark/cpu/nt_real/proposed_bv/fold0 0 output/trial10/table1/fold0
ev output/benchmark/cpu/nt_real/proposed_bv/fold2 2 output/trial10/table1/fold2
ev output/trial8/cpu/nt_real/proposed_bv/fold1 1 output/trial10/trial8/fold1
ev output/trial8/cpu/nt_real/proposed_bv/fold2 2 output/trial10/trial8/fold2
ev output/benchmark/cpu/nt_real/proposed_bv/fold1 1 output/trial10/table1/fold1
echo ALLDONE
