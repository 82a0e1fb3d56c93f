# potential, neighbours, minimizer and output: read after every clear
pair_style sw
pair_coeff * * Si.sw Si
neighbor 1.0 nsq
neigh_modify once no every 1 delay 0 check yes
min_style ${style}
min_modify dmax 0.01 ${line}
thermo 1
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz lx ly lz vol
thermo_modify norm no
