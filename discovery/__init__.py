"""CT nodule discovery: classify, explain, align, discover."""
