# Helpers the bench scripts and perf/profile.sh share (sourced after `cd` to the repository's
# root).

# The median of the numbers on stdin, one per line (the mean of the middle two for an even
# count).
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# The aggregate goodput (MiB/s) from `ringblast get`'s table on stdin.
goodput() { grep -o 'goodput [0-9.]* MiB/s' | tail -1 | awk '{print $2}'; }

# CPU time (user + system) process $1 has used so far, in clock ticks of $HZ per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
