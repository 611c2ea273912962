# gnuplot plot.gp (in this folder) -> plot.png; written by bench/blockreport
# plot.dat: each system's median headline (IOPS or MB/s) ÷ NVMe-oF's; NaN = no figure
set terminal pngcairo size 1400,700 font "DejaVu Sans,13"
set output "plot.png"
set title "rbd block benchmark (quick mode, repetitions: 1, guest 6.1.0-57-amd64, qemu TCG): throughput relative to kernel NVMe-oF/RDMA = 1\n4k workloads: IOPS, sequential: MB/s; medians; brd (local RAM, far off the scale) omitted; missing bar = n/a or failed"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set datafile missing "NaN"
set ylabel "÷ NVMe-oF/RDMA (higher is better)"
set yrange [0:1.24]
set grid ytics
set key outside bottom center horizontal
set key autotitle columnheader
set xrange [-0.6:5-0.4]
set xtics nomirror
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb "black"
plot 'plot.dat' using 2:xtic(1) lc rgb "#4c72b0", \
     'plot.dat' using 3:xtic(1) lc rgb "#dd8452", \
     'plot.dat' using 4:xtic(1) lc rgb "#55a868", \
     'plot.dat' using 5:xtic(1) lc rgb "#c44e52", \
     'plot.dat' using 6:xtic(1) lc rgb "#8172b3", \
     'plot.dat' using 7:xtic(1) lc rgb "#937860", \
     'plot.dat' using ($0+-0.3571):($2):(sprintf("%.2f", $2)) with labels offset 0,0.7 font ",10" notitle, \
     'plot.dat' using ($0+-0.2143):($3):(sprintf("%.2f", $3)) with labels offset 0,0.7 font ",10" notitle, \
     'plot.dat' using ($0+-0.0714):($4):(sprintf("%.2f", $4)) with labels offset 0,0.7 font ",10" notitle, \
     'plot.dat' using ($0+0.0714):($5):(sprintf("%.2f", $5)) with labels offset 0,0.7 font ",10" notitle, \
     'plot.dat' using ($0+0.2143):($6):(sprintf("%.2f", $6)) with labels offset 0,0.7 font ",10" notitle, \
     'plot.dat' using ($0+0.3571):($7):(sprintf("%.2f", $7)) with labels offset 0,0.7 font ",10" notitle
