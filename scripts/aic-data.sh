#!/usr/bin/env bash
# Builds the AIC training and held-out sets (docs/aic.md, "Training data") as 16 kHz mono
# 16-bit WAV under $AURALINK_AIC_DATA (default ~/.cache/auralink-aic-data). Idempotent: a
# finished set is kept. Everything is generated or comes from Debian packages:
#   train/human-{fr,it,ru}  Asterisk's French, Italian and Russian prompts (G.722, 16 kHz)
#   train/espeak            espeak-ng, 12 languages × 5 voices, with sox level, noise, reverb
#   heldout/human-en        every 4th of Asterisk's English prompts: a speaker and recordings
#                           training never hears (English is in training only as espeak-ng)
#   heldout/espeak-en       two English voice variants and sentences training never uses
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

out="${AURALINK_AIC_DATA:-$HOME/.cache/auralink-aic-data}"
stamp="$out/.complete-v1"
if [ -f "$stamp" ]; then
  echo "aic-data: $out is complete"
  exit 0
fi
apt_install espeak-ng sox ffmpeg asterisk-core-sounds-en-g722 asterisk-core-sounds-fr-g722 \
  asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722
# Only what this script makes: the folder may hold other things.
rm -rf "$out/train" "$out/heldout"
mkdir -p "$out"/train/{human-fr,human-it,human-ru,espeak} "$out"/heldout/{human-en,espeak-en}
sounds=/usr/share/asterisk/sounds

g722() { # source-dir dest-dir [every-nth]
  local n=0 every="${3:-1}"
  find -L "$1" -name '*.g722' | sort | while read -r f; do
    n=$((n + 1))
    [ $(((n - 1) % every)) -eq 0 ] || continue
    name=$(echo "${f#"$1"/}" | tr '/' '_')
    ffmpeg -nostdin -hide_banner -loglevel error -f g722 -i "$f" -ar 16000 -ac 1 -sample_fmt s16 "$2/${name%.g722}.wav"
  done
  echo "aic-data: $(ls "$2" | wc -l) files in $2"
}
g722 "$sounds/fr_CA_f_June" "$out/train/human-fr"
g722 "$sounds/it_IT_m_Carlo" "$out/train/human-it"
g722 "$sounds/ru_RU_f_IvrvoiceRU" "$out/train/human-ru"
g722 "$sounds/en_US_f_Allison" "$out/heldout/human-en" 4

train_text=(
  "The quick brown fox jumps over the lazy dog near the quiet river bank."
  "Please call me back when the meeting has finished, I will be at my desk."
  "Seven hundred and forty two people joined the conference this morning."
  "Could you share your screen again? The slides did not come through."
  "We measured the latency twice, and both times it stayed under fifty milliseconds."
  "Turn left at the second light, then follow the signs to the station."
  "Der Zug nach Berlin fährt heute eine halbe Stunde später ab."
  "El mercado abre a las nueve y cierra cuando se acaba la fruta."
  "Il fait beau aujourd'hui, nous irons marcher le long de la mer."
  "Questa sera la riunione comincia alle otto in punto."
  "Я позвоню тебе завтра утром, когда приеду в город."
  "Ik heb de fiets gisteren naar de winkel gebracht."
)
heldout_text=(
  "Birch canoes slid on the smooth planks while the crowd watched from the shore."
  "A large size in stockings is hard to sell, so the shop keeps only a few."
  "The audio cut out for a second, can everyone still hear me clearly?"
  "Her report on the new budget will be ready by the end of next week."
  "Nine bright lamps hung over the long wooden table in the old hall."
)
langs=(en-us en-gb de fr-fr es it pt-br ru pl nl hi cmn)
voices=(m1 m3 f2 f4 m7)
RANDOM=7
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
speak() { # voice text out.wav
  espeak-ng -v "$1" -s $((140 + RANDOM % 50)) -p $((30 + RANDOM % 40)) -w "$tmp/raw.wav" "$2"
  sox -R "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/clean.wav" gain -n $((-3 - RANDOM % 18))
  case $((RANDOM % 3)) in
    0) cp "$tmp/clean.wav" "$3" ;;
    1) sox -R "$tmp/clean.wav" -b 16 "$3" reverb $((20 + RANDOM % 40)) ;;
    2)
      len=$(sox --i -D "$tmp/clean.wav")
      sox -R -n -r 16000 -c 1 -b 16 "$tmp/noise.wav" synth "$len" pinknoise vol 0.0$((1 + RANDOM % 5))
      sox -R -m "$tmp/clean.wav" "$tmp/noise.wav" -b 16 "$3"
      ;;
  esac
}
n=0
for lang in "${langs[@]}"; do
  for v in "${voices[@]}"; do
    for i in "${!train_text[@]}"; do
      n=$((n + 1))
      speak "$lang+$v" "${train_text[$i]}" "$out/train/espeak/$lang-$v-$i.wav"
    done
  done
done
echo "aic-data: $n files in $out/train/espeak"
for i in "${!heldout_text[@]}"; do
  for v in f5 m2; do
    speak "en-us+$v" "${heldout_text[$i]}" "$out/heldout/espeak-en/$v-$i.wav"
  done
done
touch "$stamp"
echo "aic-data: done ($(du -sh "$out" | cut -f1))"
