#!/bin/sh
# Counts this visit and answers with the count. The count lives in /data/visits (a volume).
# mkdir is atomic: the lock directory keeps two simultaneous visits from reading the same
# number (a lock left by a killed script is taken over after about two seconds).
tries=0
until mkdir /data/.lock 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -ge 200 ] && break
    usleep 10000
done
count=$(( $(cat /data/visits 2>/dev/null || echo 0) + 1 ))
echo "$count" > /data/visits
rmdir /data/.lock 2>/dev/null
printf 'Content-Type: text/plain\r\n\r\n'
printf 'Hello from Headwater! This page has been visited %s times.\n' "$count"
printf 'version: %s\n' "${APP_VERSION:-1}"
